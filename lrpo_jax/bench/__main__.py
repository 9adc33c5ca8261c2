"""Dispatch `python -m lrpo_jax.bench NAME [args...]` to `lrpo_jax.bench.NAME.main(args)`."""
import importlib
import pkgutil
import sys

import lrpo_jax.bench as pkg


def available() -> list[str]:
    # common: shared helpers; tunix_peer: runs inside Tunix's own venv, driven by `bench sampler --tunix`
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name not in ("common", "__main__", "tunix_peer"))


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m lrpo_jax.bench NAME [args...]\nbenchmarks: " + ", ".join(names))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in names:
        print(f"unknown benchmark {name!r}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    importlib.import_module(f"lrpo_jax.bench.{name}").main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
