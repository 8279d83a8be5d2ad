"""CHANNEL_LAYERS handling: ChannelLayerManager, get_channel_layer and the public names."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

import tidings.layers
from tidings.exceptions import InvalidChannelLayerError
from tidings.layers import (
    DEFAULT_CHANNEL_LAYER,
    BaseChannelLayer,
    ChannelLayerManager,
    InMemoryChannelLayer,
    channel_layers,
    get_channel_layer,
)
from tidings.layers._manager import resolve_backend_path

INMEMORY = "tidings.layers.InMemoryChannelLayer"


class KwargsLayer(InMemoryChannelLayer):
    """A backend that takes any options (so the manager cannot check their names)."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options


@pytest.fixture
def unset_setting() -> Iterator[None]:
    """Run with CHANNEL_LAYERS not set at all."""
    with override_settings():
        del settings.CHANNEL_LAYERS
        yield


def layers_setting(**entry: Any) -> override_settings:
    """``override_settings`` with one ``default`` alias made of ``entry``."""
    return override_settings(CHANNEL_LAYERS={"default": entry})


def build_error(setting: Any, alias: str = "default") -> str:
    """Return the message of the error that building ``alias`` under ``setting`` raises."""
    with (
        override_settings(CHANNEL_LAYERS=setting),
        pytest.raises(InvalidChannelLayerError) as info,
    ):
        ChannelLayerManager()[alias]
    return str(info.value)


def test_public_names() -> None:
    assert set(tidings.layers.__all__) == {
        "DEFAULT_CHANNEL_LAYER",
        "BaseChannelLayer",
        "ChannelLayerManager",
        "InMemoryChannelLayer",
        "Message",
        "channel_layers",
        "get_channel_layer",
    }
    for name in tidings.layers.__all__:
        assert hasattr(tidings.layers, name)
    assert DEFAULT_CHANNEL_LAYER == "default"
    assert isinstance(channel_layers, ChannelLayerManager)


# -- get_channel_layer ---------------------------------------------------------------


def test_get_channel_layer_builds_once_and_caches() -> None:
    layer = get_channel_layer()
    assert isinstance(layer, InMemoryChannelLayer)
    assert get_channel_layer() is layer
    assert get_channel_layer("default") is layer
    assert channel_layers["default"] is layer


def test_setting_changes_reset_the_cache() -> None:
    before = get_channel_layer()
    with layers_setting(BACKEND=INMEMORY, CONFIG={"capacity": 7, "expiry": 5}):
        during = get_channel_layer()
        assert isinstance(during, InMemoryChannelLayer)
        assert (during.capacity, during.expiry) == (7, 5)
        assert during is not before
    after = get_channel_layer()
    assert after is not during
    assert after is not before  # forgotten on every change, rebuilt from the restored setting
    assert isinstance(after, InMemoryChannelLayer)
    assert after.capacity == 100


def test_unset_setting_means_an_in_memory_default(unset_setting: None) -> None:
    manager = ChannelLayerManager()
    assert "default" in manager
    assert manager.enabled
    layer = manager["default"]
    assert isinstance(layer, InMemoryChannelLayer)
    assert isinstance(manager.make_test_backend("default"), InMemoryChannelLayer)
    with pytest.raises(InvalidChannelLayerError, match="has no 'other' alias"):
        manager["other"]


def test_unset_setting_via_the_global_function() -> None:
    with override_settings(CHANNEL_LAYERS={}):
        del settings.CHANNEL_LAYERS
        assert isinstance(get_channel_layer(), InMemoryChannelLayer)


def test_empty_setting_means_no_channel_layer() -> None:
    with override_settings(CHANNEL_LAYERS={}):
        assert get_channel_layer() is None
        assert not channel_layers.enabled
        with pytest.raises(InvalidChannelLayerError, match="configured aliases: none"):
            channel_layers["default"]


def test_missing_alias_is_named() -> None:
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": INMEMORY}}):
        assert "chat" not in channel_layers
        with pytest.raises(
            InvalidChannelLayerError,
            match=r"CHANNEL_LAYERS has no 'chat' alias \(configured aliases: 'default'\)",
        ):
            get_channel_layer("chat")


def test_several_aliases_are_separate_layers() -> None:
    setting = {"default": {"BACKEND": INMEMORY}, "other": {"BACKEND": INMEMORY}}
    with override_settings(CHANNEL_LAYERS=setting):
        assert get_channel_layer("other") is not get_channel_layer("default")
        assert get_channel_layer("other") is get_channel_layer("other")


# -- the manager ----------------------------------------------------------------------


def test_setting_is_read_lazily() -> None:
    manager = ChannelLayerManager()  # built before the setting below exists
    with layers_setting(BACKEND=INMEMORY, CONFIG={"capacity": 3}):
        assert manager["default"].capacity == 3


def test_setting_is_read_once() -> None:
    with layers_setting(BACKEND=INMEMORY, CONFIG={"capacity": 3}):
        manager = ChannelLayerManager()
        assert manager.configs["default"]["CONFIG"] == {"capacity": 3}
        # Assigning to settings directly sends no setting_changed signal.
        settings.CHANNEL_LAYERS = {"default": {"BACKEND": INMEMORY, "CONFIG": {"capacity": 4}}}
        assert manager["default"].capacity == 3


def test_make_backend_builds_a_new_layer_each_time() -> None:
    with layers_setting(BACKEND=INMEMORY, CONFIG={"capacity": 3}, TEST_CONFIG={"capacity": 9}):
        manager = ChannelLayerManager()
        first, second = manager.make_backend("default"), manager.make_backend("default")
        assert first is not second
        assert first.capacity == 3
        test_layer = manager.make_test_backend("default")
        assert test_layer.capacity == 9
        assert manager.backends == {}


def test_make_test_backend_needs_test_config() -> None:
    with (
        layers_setting(BACKEND=INMEMORY),
        pytest.raises(
            InvalidChannelLayerError,
            match=r"CHANNEL_LAYERS\['default'\]\['TEST_CONFIG'\] is missing",
        ),
    ):
        ChannelLayerManager().make_test_backend("default")


def test_set_replaces_a_layer() -> None:
    with layers_setting(BACKEND=INMEMORY):
        manager = ChannelLayerManager()
        replacement = InMemoryChannelLayer()
        assert manager.set("default", replacement) is None
        assert manager["default"] is replacement
        other = InMemoryChannelLayer()
        assert manager.set("default", other) is replacement
        assert manager["default"] is other


def test_concurrent_first_use_builds_one_layer() -> None:
    with layers_setting(BACKEND=INMEMORY):
        manager = ChannelLayerManager()
        barrier = threading.Barrier(8)
        seen: list[BaseChannelLayer] = []

        def use() -> None:
            barrier.wait()
            seen.append(manager["default"])

        threads = [threading.Thread(target=use) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(seen) == 8
        assert len({id(layer) for layer in seen}) == 1


def test_other_settings_do_not_reset() -> None:
    manager = ChannelLayerManager()
    layer = manager["default"]
    with override_settings(DEBUG=True):
        assert manager["default"] is layer


# -- backends ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "tidings.layers.InMemoryChannelLayer",
        "tidings.layers.inmemory.InMemoryChannelLayer",
        "channels.layers.InMemoryChannelLayer",
    ],
)
def test_backend_paths_for_the_in_memory_layer(path: str) -> None:
    with layers_setting(BACKEND=path):
        assert type(ChannelLayerManager()["default"]) is InMemoryChannelLayer


def test_channels_backend_paths_map_to_tidings() -> None:
    assert resolve_backend_path("channels.layers.InMemoryChannelLayer") == INMEMORY
    for path in (
        "channels_redis.core.RedisChannelLayer",
        "channels_redis.pubsub.RedisPubSubChannelLayer",
    ):
        assert resolve_backend_path(path) == "tidings.layers.redis.RedisChannelLayer"
    assert resolve_backend_path("my.own.Layer") == "my.own.Layer"


def test_backend_taking_any_options() -> None:
    with layers_setting(BACKEND=f"{__name__}.KwargsLayer", CONFIG={"anything": 1}):
        layer = ChannelLayerManager()["default"]
        assert isinstance(layer, KwargsLayer)
        assert layer.options == {"anything": 1}


# -- errors name the setting key -------------------------------------------------------


def test_setting_must_be_a_dict() -> None:
    with (
        override_settings(CHANNEL_LAYERS=None),
        pytest.raises(InvalidChannelLayerError, match="CHANNEL_LAYERS must be a dict"),
    ):
        get_channel_layer()


def test_entry_must_be_a_dict() -> None:
    message = build_error({"default": INMEMORY})
    assert message.startswith("CHANNEL_LAYERS['default'] must be a dict with a 'BACKEND' key")


def test_unknown_entry_keys() -> None:
    message = build_error({"default": {"BACKEND": INMEMORY, "CONIFG": {}}})
    assert "CHANNEL_LAYERS['default'] has unknown key(s) 'CONIFG'" in message


def test_missing_backend() -> None:
    message = build_error({"default": {"CONFIG": {}}})
    assert message.startswith("CHANNEL_LAYERS['default']['BACKEND'] is missing")


def test_backend_must_be_a_string() -> None:
    message = build_error({"default": {"BACKEND": InMemoryChannelLayer}})
    assert message.startswith("CHANNEL_LAYERS['default']['BACKEND'] must be a dotted path string")


@pytest.mark.parametrize(
    "path",
    ["tidings.layers.NoSuchLayer", "no_such_package.Layer", "nodots"],
)
def test_unimportable_backend(path: str) -> None:
    with layers_setting(BACKEND=path), pytest.raises(InvalidChannelLayerError) as info:
        ChannelLayerManager()["default"]
    assert str(info.value).startswith(
        f"CHANNEL_LAYERS['default']['BACKEND'] = {path!r} cannot be imported"
    )
    assert isinstance(info.value.__cause__, ImportError)


def test_mapped_path_is_shown_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        tidings.layers._manager.BACKEND_ALIASES, "old.Layer", "tidings.layers.NoSuchLayer"
    )
    message = build_error({"default": {"BACKEND": "old.Layer"}})
    assert "'old.Layer' (read as 'tidings.layers.NoSuchLayer') cannot be imported" in message


def test_backend_must_be_a_class() -> None:
    path = "tidings.layers.get_channel_layer"
    message = build_error({"default": {"BACKEND": path}})
    assert message == (
        f"CHANNEL_LAYERS['default']['BACKEND'] = {path!r} is not a class: name a channel "
        "layer class, e.g. a subclass of tidings.layers.BaseChannelLayer"
    )


def test_backend_must_make_a_channel_layer() -> None:
    path = "collections.OrderedDict"
    message = build_error({"default": {"BACKEND": path}})
    assert message == (
        f"CHANNEL_LAYERS['default']['BACKEND'] = {path!r} is not a channel layer: its "
        "instances lack send, receive, new_channel (subclass tidings.layers.BaseChannelLayer)"
    )


class DuckLayer:
    """A backend with the layer methods that does not subclass BaseChannelLayer."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    async def send(self, channel: str, message: dict[str, Any]) -> None: ...

    async def receive(self, channel: str) -> dict[str, Any]:
        return {}

    async def new_channel(self, prefix: str = "specific") -> str:
        return prefix + "!x"


class BrokenLayer:
    """A backend with a bug: its constructor raises KeyError (as in Channels' test)."""

    def __init__(self, **options: Any) -> None:
        raise KeyError("a bug inside the backend")


def test_duck_typed_backend() -> None:
    with layers_setting(BACKEND=f"{__name__}.DuckLayer", CONFIG={"x": 1}):
        layer: Any = ChannelLayerManager()["default"]
        assert isinstance(layer, DuckLayer) and layer.options == {"x": 1}


def test_errors_inside_a_backend_propagate() -> None:
    # Channels' test_backend_import_error_not_hidden: not an InvalidChannelLayerError.
    with (
        layers_setting(BACKEND=f"{__name__}.BrokenLayer"),
        pytest.raises(KeyError, match="a bug inside the backend"),
    ):
        ChannelLayerManager().make_backend("default")


def test_unknown_config_options() -> None:
    message = build_error(
        {"default": {"BACKEND": INMEMORY, "CONFIG": {"hosts": [], "capacity": 5}}}
    )
    assert message.startswith(
        "CHANNEL_LAYERS['default']['CONFIG'] has option(s) 'hosts' that "
        "tidings.layers.inmemory.InMemoryChannelLayer does not take; "
        "it takes capacity, channel_capacity, expiry, group_expiry"
    )


def test_config_must_be_a_dict() -> None:
    message = build_error({"default": {"BACKEND": INMEMORY, "CONFIG": [("capacity", 1)]}})
    assert message.startswith("CHANNEL_LAYERS['default']['CONFIG'] must be a dict of options")


def test_config_values_are_checked() -> None:
    with (
        layers_setting(BACKEND=INMEMORY, CONFIG={"capacity": 0}),
        pytest.raises(InvalidChannelLayerError) as info,
    ):
        get_channel_layer()
    assert str(info.value) == (
        "CHANNEL_LAYERS['default']['CONFIG'] is not valid: capacity must be an int >= 1, not 0"
    )
    assert isinstance(info.value.__cause__, ValueError)


def test_test_config_errors_name_test_config() -> None:
    with (
        layers_setting(BACKEND=INMEMORY, TEST_CONFIG={"expiry": -1}),
        pytest.raises(InvalidChannelLayerError, match=r"\['TEST_CONFIG'\] is not valid"),
    ):
        ChannelLayerManager().make_test_backend("default")


def test_invalid_channel_layer_error_is_a_value_error() -> None:
    # Code written for Channels catches it as ValueError.
    with layers_setting(CONFIG={}), pytest.raises(ValueError, match="BACKEND"):
        get_channel_layer()
