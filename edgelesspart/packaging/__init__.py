"""Deployable packages of a bundle, each checked against its target (docs/deploy.md).

* :mod:`~edgelesspart.packaging.edge`: the edge part as a Docker build context per device target
  (Jetson, Raspberry Pi, x86) plus a systemd unit and an env file (``package-edge``);
* :mod:`~edgelesspart.packaging.cloud_lambda`: the cloud part as a self-contained AWS Lambda zip
  (or a container image) with a SAM template (``package-cloud --provider lambda``);
* :mod:`~edgelesspart.packaging.cloud_gcf`: the cloud part as a Google Cloud Functions source
  directory (``package-cloud --provider gcf``);
* :mod:`~edgelesspart.packaging.targets`: the pinned requirements of every target platform;
* :mod:`~edgelesspart.packaging.output`: output directories, refused without ``--overwrite``.

This layer sits above the services it packages (it reads their source to ship it); nothing below
imports it.
"""
