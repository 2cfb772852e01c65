"""The REST API (Django REST Framework): thin views over `selectors` (reads) and `services`
(writes), with their pagination, filters, throttling, errors (RFC 9457), parsers and the
OpenAPI post-processing. Included by the host's URLconf under `api/`."""
