"""Real deployment of a fedloom experiment on Flower's deployment engine.

One ``flower-superlink`` (the server), one ``flower-supernode`` per site, and ``flwr run``
to start the app declared in ``pyproject.toml`` (``[tool.flwr.app]``) with the Hydra
overrides that ``simulate.py`` takes. See README.md, "Deployment".

- ``server_app``: the ServerApp (``prepare_experiment(settings, out).start(grid)``).
- ``client_app``: the ClientApp (the Keras client on this node's data).
- ``node_data``: which data a SuperNode trains on, prepared once per run and cached.
- ``config``: Hydra ``compose`` of ``conf/`` from the run config's ``overrides``.
- ``credentials``: a test CA and TLS server certificate, SuperNode key pairs.
- ``processes``: starting and always stopping local process trees.
- ``launch``: a whole deployment on 127.0.0.1 (``python deploy.py``).

Importing this package imports nothing: the ClientApp process loads only what a
message needs, and TensorFlow only once the node's data is found.
"""
