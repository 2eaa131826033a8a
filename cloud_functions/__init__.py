"""EdgeLessPart cloud part entry points (no TensorFlow).

* :mod:`cloud_functions.handler` — the AWS Lambda handler ``handler(event, context)``;
* :mod:`cloud_functions.http_entry` — a Flask app factory for any HTTP function host;
* :mod:`cloud_functions.local_server` — a local server speaking the Lambda Invoke API;
* :mod:`cloud_functions.gcf_entry` — the Google Cloud Functions entry ``main.py`` calls.

Their packaging (the Lambda zip, the GCF source) is :mod:`edgelesspart.packaging`.

Nothing happens at import. The Lambda zip ships this file and ``handler.py`` only.
"""
