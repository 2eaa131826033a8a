"""Deployable packages of a bundle's edge part: a Docker build context per device target plus
a systemd unit and an env file (:mod:`edgelesspart.packaging.edge`). The cloud part's packages
(Lambda zip, Google Cloud Functions source) live in :mod:`cloud_functions.package`."""
