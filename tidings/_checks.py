"""Django system checks for a Tidings project (``manage.py check``).

Registered by :class:`tidings.apps.TidingsConfig` when ``"tidings"`` is in
``INSTALLED_APPS``; ``runserver`` and most management commands run them
first, so a wrong setting stops the command with its name instead of failing
on the first connection.

- ``tidings.E001`` (error): ``ASGI_APPLICATION`` is not set, or not a dotted path.
- ``tidings.E002`` (error): ``ASGI_APPLICATION`` cannot be imported, or is not
  callable; the message carries the import error.
- ``tidings.E003`` (error): a ``CHANNEL_LAYERS`` entry is wrong; the message
  names the key, e.g. ``CHANNEL_LAYERS['default']['BACKEND']``.
- ``tidings.E004`` (error): ``TIDINGS_PRESENCE`` is wrong (an unknown key, a value
  out of range, ``TIMEOUT`` shorter than two heartbeats); the message names the key.
- ``tidings.W001`` (warning): an app listed before ``"tidings"`` in
  ``INSTALLED_APPS`` provides ``runserver`` (``django.contrib.staticfiles``,
  say), so ``manage.py runserver`` is that app's and not Tidings'.

The application check imports ``ASGI_APPLICATION`` (as ``runserver`` and
``runworker`` would). The layer check builds each configured layer once and
drops it: layer constructors do no I/O, so nothing connects to Redis here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, register
from django.core.checks import Warning as CheckWarning
from django.core.exceptions import ImproperlyConfigured
from django.core.management import find_commands

__all__ = [
    "check_asgi_application",
    "check_channel_layers",
    "check_presence_settings",
    "check_runserver_override",
    "register_checks",
]

_SETTING = "ASGI_APPLICATION"
_HINT = (
    "Set ASGI_APPLICATION in your settings to the dotted path of your ASGI "
    "application, e.g. ASGI_APPLICATION = 'mysite.asgi.application' where "
    "mysite/asgi.py defines application = ProtocolTypeRouter({...})."
)


def check_asgi_application(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """``tidings.E001``/``E002``: ``ASGI_APPLICATION`` is set and imports to a callable."""
    dotted = getattr(settings, _SETTING, None)
    if not isinstance(dotted, str) or "." not in dotted:
        got = "it is not set" if dotted is None else f"it is {dotted!r}"
        return [
            Error(
                f"{_SETTING} must be the dotted path of your ASGI application; {got}.",
                hint=_HINT,
                id="tidings.E001",
            )
        ]
    # Imported here: routing pulls in URL resolvers, which is fine once apps are ready.
    from tidings.routing import get_default_application

    try:
        get_default_application()
    except ImproperlyConfigured as exc:
        problem = str(exc)
    except Exception as exc:
        # A bug inside the module: report it here, not as a traceback later.
        problem = f"{_SETTING} = {dotted!r} failed to import: {type(exc).__name__}: {exc}"
    else:
        return []
    return [
        Error(
            problem,
            hint=f"Check that {dotted!r} names a module on the Python path and an "
            "attribute of it holding the application, and that the module imports.",
            id="tidings.E002",
        )
    ]


def check_channel_layers(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """``tidings.E003``: every ``CHANNEL_LAYERS`` alias builds (and its ``TEST_CONFIG`` too)."""
    from tidings.exceptions import InvalidChannelLayerError
    from tidings.layers import channel_layers

    hint = (
        "See the CHANNEL_LAYERS setting: a dict of aliases, each with a 'BACKEND' "
        "class path and optional 'CONFIG' and 'TEST_CONFIG' option dicts."
    )
    try:
        configs = channel_layers.configs
    except InvalidChannelLayerError as exc:
        return [Error(str(exc), hint=hint, id="tidings.E003")]
    errors: list[CheckMessage] = []
    for alias, entry in configs.items():
        try:
            channel_layers.make_backend(alias)
            if isinstance(entry, Mapping) and "TEST_CONFIG" in entry:
                channel_layers.make_test_backend(alias)
        except InvalidChannelLayerError as exc:
            errors.append(Error(str(exc), hint=hint, id="tidings.E003"))
    return errors


def check_presence_settings(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """``tidings.E004``: ``TIDINGS_PRESENCE`` (when set) is a valid settings dict."""
    from tidings._presence_state import SETTING, parse_settings

    try:
        parse_settings(getattr(settings, SETTING, None))
    except ImproperlyConfigured as exc:
        return [
            Error(
                str(exc),
                hint="See TIDINGS_PRESENCE in the operations guide: a dict of "
                "HEARTBEAT_INTERVAL, TIMEOUT, BATCH_WINDOW, MAX_META_BYTES and SYNC_WAIT.",
                id="tidings.E004",
            )
        ]
    return []


def _provides_command(app_config: AppConfig, name: str) -> bool:
    return name in find_commands(os.path.join(app_config.path, "management"))


def check_runserver_override(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """``tidings.W001``: no app before ``"tidings"`` in ``INSTALLED_APPS`` has a ``runserver``.

    Django runs the management command of the *first* installed app that
    provides it, so ``django.contrib.staticfiles`` (or Daphne) listed first
    would run its WSGI (or its own) server instead of Tidings.
    """
    for app_config in apps.get_app_configs():
        if app_config.name == "tidings":
            return []
        if _provides_command(app_config, "runserver"):
            return [
                CheckWarning(
                    f"{app_config.name!r} comes before 'tidings' in INSTALLED_APPS and "
                    "provides its own runserver command, so 'manage.py runserver' will "
                    "not serve ASGI_APPLICATION with Tidings.",
                    hint=f"Move 'tidings' above {app_config.name!r} in INSTALLED_APPS "
                    "(Tidings' runserver serves static files too).",
                    id="tidings.W001",
                )
            ]
    return []


def register_checks() -> None:
    """Register the checks with Django (``TidingsConfig.ready()`` does; repeating is harmless)."""
    register(check_asgi_application)
    register(check_channel_layers)
    register(check_presence_settings)
    register(check_runserver_override)
