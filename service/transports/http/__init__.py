"""The HTTP transport (FastAPI under uvicorn): the app and its middlewares (app.py), the request guard and
body checks (guard.py, body.py), the core routes (routes.py), OpenRLHF's /get_reward (openrlhf.py), the
admin endpoint (admin.py), what routes share (common.py) and the OpenAPI document (openapi.py)."""
