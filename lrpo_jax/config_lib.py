"""Config helpers in big_vision style: `--config file.py:key=value,flag` arguments."""
from __future__ import annotations

import ast

import ml_collections


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses `"a=1,b=x,flag"` into a ConfigDict over `defaults`.

    A bare `flag` sets a bool default to True. Unknown keys raise an error naming the key and the
    allowed ones; values are cast to the type of their default.
    """
    out = dict(defaults)
    for part in filter(None, (arg or "").split(",")):
        key, eq, raw = part.partition("=")
        key = key.strip()
        if key not in defaults:
            raise KeyError(f"unknown config argument {key!r}; allowed: {sorted(defaults)}")
        if not eq:
            if not isinstance(defaults[key], bool):
                raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
            out[key] = True
            continue
        value = _parse_value(raw.strip())
        default = defaults[key]
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"config argument {key!r} expects a bool, got {raw!r}")
                value = value.lower() in ("true", "1")
            value = bool(value)
        elif isinstance(default, (int, float)) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"config argument {key!r} expects a number, got {raw!r}")
        elif isinstance(default, int) and not isinstance(value, int):  # steps=2.5 is not 2
            raise ValueError(f"config argument {key!r} expects an integer, got {raw!r}")
        elif isinstance(default, float):
            value = float(value)
        elif isinstance(default, str):
            value = str(raw.strip())
        out[key] = value
    return ml_collections.ConfigDict(out)


def base_config() -> ml_collections.ConfigDict:
    """`configs/common.py:get_base_config()`, loaded by path so configs work from any directory."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "common.py"
    spec = importlib.util.spec_from_file_location("lrpo_configs_common", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_base_config()


def check_keys(cfg: ml_collections.ConfigDict, schema: ml_collections.ConfigDict, prefix: str = "config") -> None:
    """Every key of `cfg` must exist in `schema` (the base config): typos fail with the key's path."""
    for key in cfg.keys():
        path = f"{prefix}.{key}"
        if key not in schema:
            raise KeyError(f"unknown config key {path!r}; known keys at {prefix}: {sorted(schema.keys())}")
        value, ref = cfg[key], schema[key]
        if isinstance(ref, ml_collections.ConfigDict) and key != "overrides":
            if not isinstance(value, ml_collections.ConfigDict):
                raise TypeError(f"config key {path!r} must be a group of settings, got {type(value).__name__}")
            check_keys(value, ref, path)


def load_sibling(config_file: str, name: str):
    """Imports `configs/<name>.py` next to `config_file` by path (configs are not a package)."""
    import importlib.util
    import pathlib
    path = pathlib.Path(config_file).resolve().with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"lrpo_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_ranges(cfg, ranges: dict, prefix: str = "config") -> None:
    """`ranges`: dotted key -> (low, high, low inclusive); raises naming the first key out of range."""
    for key, (low, high, inclusive) in ranges.items():
        value = cfg
        for part in key.split("."):
            value = value[part]
        if not (low <= value <= high if inclusive else low < value <= high):
            raise ValueError(f"{prefix}.{key}={value!r} must be within {'[' if inclusive else '('}{low}, {high}]")
