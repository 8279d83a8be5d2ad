"""The ``CHANNEL_LAYERS`` setting: read once, checked, turned into layer instances.

``channel_layers`` (one ``ChannelLayerManager`` per process) reads the setting
on first use, builds each alias's backend the first time it is asked for,
and keeps it. Django's ``setting_changed`` signal for ``CHANNEL_LAYERS``
(sent by ``override_settings``) forgets both, so tests see their settings.

The setting, as in Channels::

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "tidings.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 100},       # keyword arguments of BACKEND
            "TEST_CONFIG": {},                 # used by make_test_backend()
        },
    }

Where Tidings differs from Channels, on purpose:

- ``CHANNEL_LAYERS`` not set at all: ``get_channel_layer()`` returns an
  ``InMemoryChannelLayer`` (Channels returns ``None``), so a fresh project's
  consumers and groups work in one process without configuration. Set
  ``CHANNEL_LAYERS = {}`` to have no channel layer (``None``), as in Channels.
- An alias that the setting lacks raises ``InvalidChannelLayerError`` naming
  the alias instead of silently giving ``None``.
- Every mistake (unknown keys, missing or unimportable ``BACKEND``, a
  ``BACKEND`` that is not a channel layer class, options the backend does not
  take, out-of-range values) raises ``InvalidChannelLayerError`` naming the
  setting key, e.g. ``CHANNEL_LAYERS['default']['BACKEND']``. Any other
  exception a backend's constructor raises (a ``KeyError``, say) propagates
  unchanged, as in Channels, so a bug inside a backend is not disguised as a
  settings mistake.
- Channels' backend paths keep working: ``channels.layers.InMemoryChannelLayer``,
  ``channels_redis.core.RedisChannelLayer`` and
  ``channels_redis.pubsub.RedisPubSubChannelLayer`` are read as their Tidings
  counterparts (see ``resolve_backend_path``). Options of those paths that
  Tidings does not honour are refused by name, with the reason.
- As in Channels, a backend need not subclass ``BaseChannelLayer``: any class
  whose instances have ``send``, ``receive`` and ``new_channel`` will do.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Mapping
from typing import Any, Final, cast

from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from tidings.exceptions import InvalidChannelLayerError
from tidings.layers.base import BaseChannelLayer

__all__ = [
    "BACKEND_ALIASES",
    "DEFAULT_CHANNEL_LAYER",
    "ChannelLayerManager",
    "channel_layers",
    "get_channel_layer",
    "resolve_backend_path",
]

DEFAULT_CHANNEL_LAYER: Final = "default"
"""The alias consumers and ``get_channel_layer()`` use unless told otherwise."""

_SETTING: Final = "CHANNEL_LAYERS"
_INMEMORY_PATH: Final = "tidings.layers.InMemoryChannelLayer"
_IMPLICIT_CONFIGS: Final[Mapping[str, Mapping[str, Any]]] = {
    DEFAULT_CHANNEL_LAYER: {"BACKEND": _INMEMORY_PATH, "CONFIG": {}, "TEST_CONFIG": {}},
}
_ALIAS_KEYS: Final = ("BACKEND", "CONFIG", "TEST_CONFIG")
_REDIS_PATH: Final = "tidings.layers.redis.RedisChannelLayer"
BACKEND_ALIASES: Final[Mapping[str, str]] = {
    "channels.layers.InMemoryChannelLayer": _INMEMORY_PATH,
    "channels_redis.core.RedisChannelLayer": _REDIS_PATH,
    # One Redis layer serves both: it delivers group messages once per node, as
    # the pub/sub layer does, and also queues (capacity, expiry) as the core one.
    "channels_redis.pubsub.RedisPubSubChannelLayer": _REDIS_PATH,
}
# Options of a Channels BACKEND path that its Tidings counterpart refuses: path -> option
# -> why. (Other options it does not take are refused by the generic check.)
_REFUSED_OPTIONS: Final[Mapping[str, Mapping[str, str]]] = {
    "channels_redis.pubsub.RedisPubSubChannelLayer": dict.fromkeys(
        ("on_disconnect", "on_reconnect"),
        "channels_redis 4.3 accepts it but never sends that message; Tidings does not "
        "either, so remove it (Tidings' receive loops reconnect by themselves, and register "
        "this process's group memberships again when Redis lost them)",
    ),
}
_LAYER_METHODS: Final = ("send", "receive", "new_channel")


def resolve_backend_path(path: str) -> str:
    """Return the Tidings class path to import for a ``BACKEND`` value.

    Channels' own paths map to their Tidings counterparts, so a migrated
    settings file works unchanged; any other path is returned as given.
    """
    return BACKEND_ALIASES.get(path, path)


def _accepted_options(backend: type[BaseChannelLayer]) -> tuple[frozenset[str], bool]:
    """Return the keyword names ``backend`` takes, and whether it takes ``**kwargs``."""
    names: set[str] = set()
    try:
        parameters = inspect.signature(backend).parameters.values()
    except (TypeError, ValueError):  # a class without a signature (built in C): call it
        return frozenset(), True
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return frozenset(names), True
        if parameter.kind in (
            inspect.Parameter.KEYWORD_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            names.add(parameter.name)
    return frozenset(names), False


class ChannelLayerManager:
    """Builds channel layers from ``CHANNEL_LAYERS`` on first use and keeps one per alias.

    Thread-safe. ``manager[alias]`` returns the alias's layer, building it the
    first time; ``make_backend``/``make_test_backend`` build a fresh one each call.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._configs: Mapping[str, Any] | None = None
        self.backends: dict[str, BaseChannelLayer] = {}
        """Layers built so far, by alias."""
        setting_changed.connect(self._reset_backends)

    def _reset_backends(self, *, setting: str, **kwargs: object) -> None:
        """Forget the setting and the layers built from it when ``CHANNEL_LAYERS`` changes."""
        if setting == _SETTING:
            with self._lock:
                self._configs = None
                self.backends = {}

    @property
    def configs(self) -> Mapping[str, Any]:
        """The ``CHANNEL_LAYERS`` setting (the implicit in-memory default if it is unset).

        Raises:
            InvalidChannelLayerError: the setting is not a dict.
        """
        with self._lock:
            if self._configs is None:
                self._configs = self._read_setting()
            return self._configs

    @staticmethod
    def _read_setting() -> Mapping[str, Any]:
        """Read ``CHANNEL_LAYERS`` from Django settings and check its outer shape."""
        if not hasattr(settings, _SETTING):
            return _IMPLICIT_CONFIGS
        configs = getattr(settings, _SETTING)
        if not isinstance(configs, Mapping):
            raise InvalidChannelLayerError(
                f"{_SETTING} must be a dict of aliases, not {type(configs).__name__} "
                "(set it to {} to have no channel layer)"
            )
        return configs

    @property
    def enabled(self) -> bool:
        """Whether any channel layer is configured (``False`` only for ``CHANNEL_LAYERS = {}``)."""
        return bool(self.configs)

    def __contains__(self, alias: object) -> bool:
        return alias in self.configs

    def __getitem__(self, alias: str) -> BaseChannelLayer:
        """Return the layer for ``alias``, building it on first use.

        Raises:
            InvalidChannelLayerError: the alias is missing or its entry is wrong.
        """
        layer = self.backends.get(alias)
        if layer is not None:
            return layer
        with self._lock:
            layer = self.backends.get(alias)
            if layer is None:
                layer = self.backends[alias] = self.make_backend(alias)
            return layer

    def set(self, alias: str, layer: BaseChannelLayer) -> BaseChannelLayer | None:
        """Use ``layer`` for ``alias`` from now on; return the layer it replaces, if any."""
        with self._lock:
            old = self.backends.get(alias)
            self.backends[alias] = layer
            return old

    def make_backend(self, alias: str) -> BaseChannelLayer:
        """Build a new layer for ``alias`` from its ``CONFIG``.

        Raises:
            InvalidChannelLayerError: the alias is missing or its entry is wrong.
        """
        return self._build(alias, "CONFIG")

    def make_test_backend(self, alias: str) -> BaseChannelLayer:
        """Build a new layer for ``alias`` from its ``TEST_CONFIG``.

        Raises:
            InvalidChannelLayerError: the alias is missing, has no ``TEST_CONFIG``,
                or its entry is wrong.
        """
        return self._build(alias, "TEST_CONFIG")

    def _entry(self, alias: str) -> Mapping[str, Any]:
        """Return the checked settings entry of ``alias``."""
        configs = self.configs
        if alias not in configs:
            known = ", ".join(repr(name) for name in configs) or "none"
            raise InvalidChannelLayerError(
                f"{_SETTING} has no {alias!r} alias (configured aliases: {known})"
            )
        entry = configs[alias]
        where = f"{_SETTING}[{alias!r}]"
        if not isinstance(entry, Mapping):
            raise InvalidChannelLayerError(
                f"{where} must be a dict with a 'BACKEND' key, not {type(entry).__name__}"
            )
        unknown = sorted(str(key) for key in entry if key not in _ALIAS_KEYS)
        if unknown:
            raise InvalidChannelLayerError(
                f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; "
                f"expected {', '.join(map(repr, _ALIAS_KEYS))}"
            )
        if "BACKEND" not in entry:
            raise InvalidChannelLayerError(
                f"{where}['BACKEND'] is missing: name a channel layer class, "
                f"e.g. {_INMEMORY_PATH!r}"
            )
        return entry

    def _build(self, alias: str, config_key: str) -> BaseChannelLayer:
        """Build a layer from ``CHANNEL_LAYERS[alias]``, using ``config_key`` for options."""
        entry = self._entry(alias)
        where = f"{_SETTING}[{alias!r}]"
        path = entry["BACKEND"]
        backend = _import_backend(path, f"{where}['BACKEND']")
        options = entry.get(config_key, {} if config_key == "CONFIG" else None)
        key = f"{where}[{config_key!r}]"
        if options is None:
            raise InvalidChannelLayerError(f"{key} is missing: make_test_backend() needs it")
        if not isinstance(options, Mapping):
            raise InvalidChannelLayerError(
                f"{key} must be a dict of options, not {type(options).__name__}"
            )
        for name, reason in _REFUSED_OPTIONS.get(path, {}).items():
            if name in options:
                raise InvalidChannelLayerError(
                    f"{key} has option {name!r}, which Tidings does not take for "
                    f"BACKEND {path!r}: {reason}"
                )
        accepted, takes_any = _accepted_options(backend)
        unknown = sorted(str(name) for name in options if name not in accepted)
        if unknown and not takes_any:
            raise InvalidChannelLayerError(
                f"{key} has option(s) {', '.join(map(repr, unknown))} that "
                f"{backend.__module__}.{backend.__qualname__} does not take; "
                f"it takes {', '.join(sorted(accepted)) or 'none'}"
            )
        try:
            layer: object = backend(**options)
        except (TypeError, ValueError) as exc:
            raise InvalidChannelLayerError(f"{key} is not valid: {exc}") from exc
        if isinstance(layer, BaseChannelLayer):
            return layer
        if not all(callable(getattr(layer, method, None)) for method in _LAYER_METHODS):
            raise InvalidChannelLayerError(
                f"{where}['BACKEND'] = {path!r} is not a channel layer: its instances lack "
                f"{', '.join(_LAYER_METHODS)} (subclass tidings.layers.BaseChannelLayer)"
            )
        return cast(BaseChannelLayer, layer)  # a duck-typed layer, as Channels allows


def _import_backend(path: object, key: str) -> type[BaseChannelLayer]:
    """Import the class named by a ``BACKEND`` value; ``key`` names it in errors."""
    if not isinstance(path, str):
        raise InvalidChannelLayerError(
            f"{key} must be a dotted path string, not {type(path).__name__}"
        )
    resolved = resolve_backend_path(path)
    shown = repr(path) if resolved == path else f"{path!r} (read as {resolved!r})"
    try:
        backend = import_string(resolved)
    except ImportError as exc:
        raise InvalidChannelLayerError(f"{key} = {shown} cannot be imported: {exc}") from exc
    if not isinstance(backend, type):
        raise InvalidChannelLayerError(
            f"{key} = {shown} is not a class: name a channel layer class, "
            "e.g. a subclass of tidings.layers.BaseChannelLayer"
        )
    # Not necessarily a subclass: Channels takes any class with the layer's methods
    # (checked on the instance, once its constructor has run).
    layer_class: type[BaseChannelLayer] = backend
    return layer_class


channel_layers = ChannelLayerManager()
"""The process's channel layer manager (Channels' ``channels.layers.channel_layers``)."""


def get_channel_layer(alias: str = DEFAULT_CHANNEL_LAYER) -> BaseChannelLayer | None:
    """Return the channel layer for ``alias``, built on first use and then shared.

    With ``CHANNEL_LAYERS`` unset this is an ``InMemoryChannelLayer``; with
    ``CHANNEL_LAYERS = {}`` it is ``None`` (no channel layer, as in Channels).

    Raises:
        InvalidChannelLayerError: the setting lacks ``alias`` or its entry is wrong.
    """
    if not channel_layers.enabled:
        return None
    return channel_layers[alias]
