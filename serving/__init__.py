"""The speech service (a front): `serving/service.py` is the BentoML service, `serving/api.py` its HTTP API.

It speaks through the one synthesizer (`models/tts.py`), reads voices from the library's registry and bundles
(`narrator/registry.py`, `narrator/bundle.py`), and imports no pipeline step.
"""
