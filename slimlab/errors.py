"""User-facing errors: one clear sentence, shown without a traceback by the CLI."""


class SlimlabError(Exception):
    """A mistake the user can fix (bad config, missing data, unknown name)."""


class ConfigError(SlimlabError, ValueError):
    """A config value is unknown, of the wrong type, or impossible."""


class DataNotFoundError(SlimlabError, FileNotFoundError):
    """A dataset is not on disk and cannot be downloaded."""


class BadDataError(SlimlabError, ValueError):
    """A dataset file is malformed, or holds something it must not (code in a pickle), or too little to learn from."""


class MissingDependencyError(SlimlabError, ImportError):
    """An optional package is needed for the requested feature."""


def require(module: str, extra: str, feature: str):
    """Import an optional dependency or raise an error naming the package to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{feature} needs the package '{module}', which is not installed: "
            f"pip install 'slimlab[{extra}]' (or pip install {module})"
        ) from exc


class RunFailed(SlimlabError):
    """A run stopped by an error from below slimlab (torch, an engine, the user's model): one line that names the
    operation, the whole traceback kept in the run's folder (error.txt)."""
