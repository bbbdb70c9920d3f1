"""``hookimpl``: the marker plugin authors put on their hook functions."""

import pluggy

from neural_alignment.registry.hookspecs import PROJECT_NAME

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
