"""The edge service's admission control: re-exported from :mod:`service_http.admission`."""

from service_http.admission import Admission  # noqa: F401
