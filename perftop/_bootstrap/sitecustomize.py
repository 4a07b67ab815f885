"""perftop's bootstrap, put first on PYTHONPATH by `perftop run`: starts the agent in every Python process.

It loads perftop from the package this file ships in (without adding that package's site-packages to
sys.path, so the app's imports are untouched), starts the agent, then hands over to any `sitecustomize`
the environment already had. Standard library only; it never raises into the program.
"""

import importlib.util
import os
import sys


def _load_perftop() -> None:
    if "perftop" in sys.modules:
        return
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        "perftop", os.path.join(pkg, "__init__.py"), submodule_search_locations=[pkg]
    )
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["perftop"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["perftop"]
        raise


def _chain() -> None:
    """Run the next `sitecustomize` on sys.path, as Python would have without us."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    for entry in rest:
        candidate = os.path.join(entry or ".", "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_perftop_chained_sitecustomize", candidate)
            if spec is not None and spec.loader is not None:
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            return
        pkg_init = os.path.join(entry or ".", "sitecustomize", "__init__.py")
        if os.path.isfile(pkg_init):
            spec = importlib.util.spec_from_file_location("_perftop_chained_sitecustomize", pkg_init)
            if spec is not None and spec.loader is not None:
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            return


def _boot() -> None:
    if os.environ.get("PERFTOP", "1") != "0":
        try:
            _load_perftop()
            from perftop.agent.autostart import autostart

            autostart()
        except Exception as exc:
            sys.stderr.write(f"perftop: agent not started in pid {os.getpid()}: {exc}\n")
    _chain()


_boot()
