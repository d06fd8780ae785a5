"""One settings model for every ``wattgate`` command: options, their kinds and defaults, how flags,
``WATTGATE_*`` variables and the ``--config`` YAML file become one set of values, and the README tables."""
