"""The reference backend: the Leap0 API served locally, sandboxes run by ``pulumi_leap0.runner``.

``app.py`` assembles the application (middleware, exception handlers, routers) and
``routes/`` holds the routes, one module per API tag; ``dependencies.py`` resolves who calls
and which sandbox a route is about, ``routing.py`` is what the route modules share.
``auth.py`` checks API keys, ``store.py`` keeps the sqlite state, ``lifecycle.py`` is the
sandbox state machine over the runner, ``runtime.py`` the one seam to the runner, and
``cli.py`` the command line. The backend knows HTTP and state; everything about namespaces
lives in the runner.
"""
