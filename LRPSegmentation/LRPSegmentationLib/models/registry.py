"""Architecture registry: a name → a builder that makes an ``nn.Module`` from keyword arguments.

A model package (see ``package``) stores an architecture *name* and its keyword arguments, never
Python code or a pickled class, so loading a package can only ever call a builder registered here.

Built-in names:

- ``"unet3d"``: the seed's Çiçek 3D U-Net (`UNet3D`); kwargs ``in_channels``, ``out_channels``,
  ``base_channels``, ``depth``.
- ``"monai.UNet"``, ``"monai.BasicUNet"``, ``"monai.DynUNet"``: MONAI networks (see
  ``monai_nets``), available when MONAI is installed (``pip install monai``).
- ``"nnunet.ensemble"``: an nnU-Net v2 fold ensemble with mirroring (`nnunet_ensemble`), available
  when dynamic_network_architectures is installed.
- ``"monai_bundle.network"``: a MONAI bundle's ``monai.*`` network fed (z, y, x) arrays
  (`monai_bundle.build_bundle_network`).

Any other network the engine can explain can be added with `register_architecture`, or by an
installed Python package through the entry-point group ``lrpsegmentation.architectures``
(``name = "module:builder"`` in its ``pyproject.toml``): such plugins are imported only when their
name is asked for (`get_builder`), and one that fails to import gives a one-line error naming its
entry point without affecting any other architecture.

Every network is first built on PyTorch's "meta" device (no memory) and refused when it would have
more than ``limits.MAX_PARAMETERS`` values, so that a package's arguments can never make the tool
allocate an absurd network; the built-in builders also check their arguments' ranges.
"""
from __future__ import annotations

import importlib.util
import itertools
from typing import Any, Callable

import torch
from torch import nn

from . import monai_nets
from .limits import MAX_PARAMETERS
from .monai_bundle import build_bundle_network
from .nnunet_ensemble import NNUNetEnsemble
from .unet3d import UNet3D

#: A builder takes the architecture's keyword arguments and returns a new (randomly initialized)
#: network.
Builder = Callable[..., nn.Module]

_BUILTIN: dict[str, Builder] = {"unet3d": UNet3D}
_BUILTIN["nnunet.ensemble"] = NNUNetEnsemble  # needs dynamic_network_architectures when built
_BUILTIN["monai_bundle.network"] = build_bundle_network  # a MONAI bundle's network (needs MONAI when built)
_registry: dict[str, Builder] = dict(_BUILTIN)

#: Entry-point group of architecture plugins: ``name = "module:builder"``.
ENTRY_POINT_GROUP = "lrpsegmentation.architectures"


def _plugin_entry_points() -> list:
    """The installed entry points of `ENTRY_POINT_GROUP` (not loaded), built-in names excluded."""
    from importlib.metadata import entry_points

    return [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in _BUILTIN
            and ep.name not in monai_nets.MONAI_BUILDERS and not ep.name.startswith("monai.")]


def _load_plugin(name: str) -> Builder | None:
    """Import and register the builder an installed package provides for ``name``; None if none does.

    Raises:
        ValueError: the plugin's module or builder cannot be loaded, or is not callable (one line
            naming the entry point and its distribution).
    """
    for entry_point in _plugin_entry_points():
        if entry_point.name != name:
            continue
        where = f"entry point {name} = {entry_point.value!r} (group {ENTRY_POINT_GROUP}"
        dist = getattr(entry_point, "dist", None)
        where += f", package {dist.name})" if dist is not None else ")"
        try:
            builder = entry_point.load()
        except Exception as error:  # noqa: BLE001 — any failure of foreign code: name the plugin
            message = " ".join(str(error).split()) or type(error).__name__
            raise ValueError(f"architecture {name!r} comes from a plugin that cannot be loaded: {where}: "
                             f"{type(error).__name__}: {message}") from None
        if not callable(builder):
            raise ValueError(f"architecture {name!r}: {where} is {type(builder).__name__}, not a builder "
                             "(a class or function returning an nn.Module)")
        _registry[name] = builder
        return builder
    return None


def available_architectures() -> list[str]:
    """The names `build_architecture` accepts right now, sorted.

    MONAI names are included only when MONAI can be imported, ``"nnunet.ensemble"`` only when
    dynamic_network_architectures is installed; plugin names (entry points of
    `ENTRY_POINT_GROUP`) are listed without importing the plugins.
    """
    names = set(_registry) | {ep.name for ep in _plugin_entry_points()}
    if importlib.util.find_spec("dynamic_network_architectures") is None:  # looked up, not imported
        names.discard("nnunet.ensemble")
    if monai_nets.monai_available():
        names.update(monai_nets.MONAI_BUILDERS)
    return sorted(names)


def register_architecture(name: str, builder: Builder, *, overwrite: bool = False) -> None:
    """Make ``name`` buildable (and so loadable from model packages).

    Args:
        name: the architecture's name as stored in packages, e.g. ``"mylab.AttentionFreeUNet"``.
            Names starting with ``"monai."`` and the built-in names are reserved.
        builder: a callable (a class or a function) taking keyword arguments and returning an
            ``nn.Module`` whose forward maps (N, C, D, H, W) → logits (N, K, D, H, W).
        overwrite: replace an earlier registration of ``name`` (built-ins can never be replaced).

    Raises:
        ValueError: empty/reserved name, builder not callable, or name already registered and
            ``overwrite`` is False.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"an architecture name must be a non-empty string, got {name!r}")
    if name in _BUILTIN or name in monai_nets.MONAI_BUILDERS or name.startswith("monai."):
        raise ValueError(f"architecture name {name!r} is reserved for the built-in architectures; "
                         "choose another name")
    if not callable(builder):
        raise ValueError(f"the builder for {name!r} must be callable (a class or a function), "
                         f"got {type(builder).__name__}")
    if name in _registry and not overwrite:
        raise ValueError(f"architecture {name!r} is already registered; pass overwrite=True to replace it")
    _registry[name] = builder


def unregister_architecture(name: str) -> None:
    """Remove a user registration (built-ins cannot be removed).

    Raises:
        ValueError: ``name`` is a built-in or not registered.
    """
    if name in _BUILTIN or name in monai_nets.MONAI_BUILDERS:
        raise ValueError(f"architecture {name!r} is built in and cannot be unregistered")
    if name not in _registry:
        raise ValueError(f"architecture {name!r} is not registered; registered: {', '.join(sorted(_registry))}")
    del _registry[name]


def get_builder(name: str) -> Builder:
    """The builder registered under ``name``.

    A name registered by no one is looked up among the installed plugins (`ENTRY_POINT_GROUP`),
    whose builder is then imported and registered.

    Raises:
        ValueError: unknown name (the message lists the known ones), a ``monai.*`` name while
            MONAI is not installed (the message says how to install it), or a plugin that cannot
            be loaded (the message names its entry point).
    """
    if name in _registry:
        return _registry[name]
    if name in monai_nets.MONAI_BUILDERS:
        if not monai_nets.monai_available():
            raise ValueError(f"architecture {name!r} needs MONAI, which is not installed: "
                             "pip install monai  (or pip install 'lrpsegmentation[monai]')")
        monai_nets.nets()  # import MONAI here, never first inside `build_on_meta`'s meta-device context
        return monai_nets.MONAI_BUILDERS[name]
    plugin = _load_plugin(name) if isinstance(name, str) else None
    if plugin is not None:
        return plugin
    hint = ""
    if isinstance(name, str) and name.startswith("monai."):
        hint = f" (MONAI architectures: {', '.join(sorted(monai_nets.MONAI_BUILDERS))})"
        if not monai_nets.monai_available():
            hint += "; MONAI is not installed: pip install monai"
    raise ValueError(f"unknown architecture {name!r}; known architectures: "
                     f"{', '.join(available_architectures())}{hint}. "
                     "Add your own with register_architecture(name, builder) or an installed package's "
                     f"'{ENTRY_POINT_GROUP}' entry point.")


def _call(name: str, builder: Builder, kwargs: dict[str, Any]) -> nn.Module:
    """``builder(**kwargs)``; its argument errors become a ValueError naming the architecture."""
    try:
        model = builder(**kwargs)
    except (TypeError, ValueError, AssertionError) as error:
        # Unknown/missing keyword arguments surface as TypeError, bad values as ValueError or (in
        # some MONAI versions) AssertionError; say which architecture and arguments it was.
        raise ValueError(f"cannot build architecture {name!r} with arguments {kwargs!r}: {error}") from error
    if not isinstance(model, nn.Module):
        raise ValueError(f"the builder of architecture {name!r} returned {type(model).__name__}, "
                         "not a torch.nn.Module")
    return model


def build_on_meta(name: str, **kwargs: Any) -> nn.Module | None:
    """Architecture ``name`` built on PyTorch's "meta" device (shapes only: nothing is allocated),
    after checking its size against `limits.MAX_PARAMETERS`.

    Returns:
        The network (in training mode, as built), or None when its builder computes on tensors
        while building, which the meta device cannot do.

    Raises:
        ValueError: unknown name, arguments the builder rejects (also impossible shapes such as a
            negative channel count), or a network with more than ``MAX_PARAMETERS`` values.
    """
    builder = get_builder(name)
    try:
        with torch.device("meta"):
            model = _call(name, builder, kwargs)
    except NotImplementedError:
        return None
    except RuntimeError as error:
        if "meta" in str(error).lower():  # needs real values (e.g. .item() at init)
            return None
        # Negative or overflowing tensor sizes: the arguments describe no buildable network.
        raise ValueError(f"cannot build architecture {name!r} with arguments {kwargs!r}: {error}") from None
    count = sum(t.numel() for t in itertools.chain(model.parameters(), model.buffers()))
    if count > MAX_PARAMETERS:
        raise ValueError(f"architecture {name!r} with arguments {kwargs!r} would have {count:.3g} parameters; "
                         f"the limit is {MAX_PARAMETERS:.0e} ({MAX_PARAMETERS * 4 / 1e9:.0f} GB in float32): "
                         "check the sizes in its arguments")
    return model


def build_architecture(name: str, **kwargs: Any) -> nn.Module:
    """A new, randomly initialized network of architecture ``name``.

    It is first built on the meta device (`build_on_meta`), so that absurd arguments fail before
    any memory is allocated; builders that cannot run there are built directly.

    Args:
        name: a registered name (see `available_architectures`).
        **kwargs: the builder's keyword arguments (e.g. ``in_channels=6, out_channels=2``).

    Returns:
        The network in training mode, as the builder made it (callers load weights, then call
        ``eval()``).

    Raises:
        ValueError: unknown name, keyword arguments the builder rejects, a network larger than
            ``limits.MAX_PARAMETERS``, or a builder that does not return an ``nn.Module``.
    """
    build_on_meta(name, **kwargs)
    return _call(name, get_builder(name), kwargs)
