"""Web-framework middleware: one footprint query per HTTP request, with no change to the
handlers. ``FootprintASGIMiddleware`` for FastAPI and Starlette (any ASGI 3 app),
``FootprintWSGIMiddleware`` for Flask and Django (any WSGI app). See docs/integrations.md.
``footprint.integrations.otel`` publishes the records as OpenTelemetry metrics (imported
on its own: it needs the ``otel`` extra). See docs/opentelemetry.md.

Neither reads or stores a request or response body, nor any header outside the
``tag_headers`` allow-list (and the response headers given to ``tokens=``).
"""

from footprint.integrations.asgi import FootprintASGIMiddleware
from footprint.integrations.wsgi import FootprintWSGIMiddleware

__all__ = ["FootprintASGIMiddleware", "FootprintWSGIMiddleware"]
