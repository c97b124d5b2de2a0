"""The HTTP and WebSocket API, one ``APIRouter`` per resource.

* ``ops``: health, readiness, Prometheus metrics;
* ``streams``: the streams and their status, tracks and latest result;
* ``safety``: a stream's zone set and protective separation figures;
* ``alerts``: a stream's kept events and the live WebSocket feed;
* ``ingest``: the WebSocket that cameras push frames to;
* ``infer``: one frame without stream memory.

Handlers are module-level functions that take the service's parts from
``deps`` (typed dependencies over the ``ServiceState`` on ``app.state``);
shared models and OpenAPI helpers are ``schemas``. ``service.app`` includes
the routers; nothing here imports ``service.app``.
"""
