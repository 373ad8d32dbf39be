"""The reference backend: the Leap0 API served locally, sandboxes run by ``pulumi_leap0.runner``.

``app.py`` holds the routes, ``auth.py`` the API keys, ``store.py`` the sqlite state,
``lifecycle.py`` the sandbox state machine over the runner, ``cli.py`` the command line.
The backend knows HTTP and state; everything about namespaces lives in the runner.
"""
