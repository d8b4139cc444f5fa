"""`marengine serve`: the HTTP image server over the continuous-batching engine
(pipeline/engine.py): protocol (request checks), app (Starlette routes), metrics
(Prometheus text), server (uvicorn)."""
