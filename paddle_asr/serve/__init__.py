"""`paddle-asr serve`: a streaming speech recognition server for exported bundles (docs/serving.md).

engine.py   the streaming recognizer, no web code: incremental fbank and chunk windows, batched
            encoding, incremental CTC prefix search, rescoring, endpointing
worker.py   the one inference thread that batches every stream's chunks
app.py      the web front end (FastAPI + uvicorn): PaddleSpeech's WebSocket and HTTP protocols
paddlespeech_client.py   PaddleSpeech's own client against the server (stage 8, tests)
"""
