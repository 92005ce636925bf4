"""`models:/NAME@ALIAS` and `models:/NAME/VERSION`: the model URIs MLflow users write.

Parsing only (no registry access), so that every layer can take a URI where it takes a
model name and a version or alias: the CLI, `Predictor.from_uri`, `load_predictor`. What a
URI names is looked up by the registry, which says when the alias or version does not exist.
MLflow's stage form (`models:/NAME/Production`) is refused: stages are deprecated in MLflow
and raymlops uses aliases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from raymlops.core.errors import UserInputError

__all__ = ["ModelURI", "is_model_uri", "parse_model_uri", "resolve_model_ref"]

SCHEME = "models:/"
#: MLflow's alias rule: letters, digits, '_' and '-'.
_ALIAS = re.compile(r"^[A-Za-z0-9_\-]+$")
_EXAMPLES = "models:/NAME@ALIAS (e.g. models:/breast-cancer@champion) or models:/NAME/VERSION"


@dataclass(frozen=True)
class ModelURI:
    """A registered model and one of its versions: `ref` is a version number or an alias."""

    name: str
    ref: int | str

    def __str__(self) -> str:
        if isinstance(self.ref, int):
            return f"{SCHEME}{self.name}/{self.ref}"
        return f"{SCHEME}{self.name}@{self.ref}"


def is_model_uri(text: str) -> bool:
    """Whether `text` is meant as a model URI (starts with `models:`), valid or not."""
    return text.startswith("models:")


def parse_model_uri(uri: str) -> ModelURI:
    """The name and version/alias of `models:/NAME@ALIAS` or `models:/NAME/VERSION`.

    Raises UserInputError naming the URI and the accepted forms when it is malformed.
    """

    def bad(why: str) -> UserInputError:
        return UserInputError(f"invalid model URI '{uri}': {why}; expected {_EXAMPLES}")

    if not uri.startswith(SCHEME) or uri.startswith(SCHEME + "/"):
        raise bad(
            "it must start with 'models:/' (a registry URI such as models://… is not supported)"
        )
    rest = uri[len(SCHEME) :]
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if not alias:
            raise bad("the alias after '@' is empty")
        if not _ALIAS.match(alias):
            raise bad(f"alias '{alias}' may hold only letters, digits, '_' and '-'")
        ref: int | str = alias
    else:
        name, sep, version = rest.rpartition("/")
        if not sep:
            raise bad("it names no version or alias")
        if not version.isdigit() or int(version) < 1:
            if version.lower() == "latest":
                what = "not supported (it moves with every registration)"
            elif version.isalpha():
                what = "a stage, which raymlops does not use"
            else:
                what = "not a version number"
            raise bad(f"'{version}' is {what}: give a version number or an alias")
        ref = int(version)
    if not name or "/" in name:
        raise bad("the model name is empty" if not name else f"'{name}' is not one model name")
    return ModelURI(name, ref)


def resolve_model_ref(
    name_or_uri: str, version: int | str | None, default: int | str | None = None
) -> tuple[str, int | str | None]:
    """(model name, version number or alias) from a name and `version`, or from a URI.

    A URI carries its own version or alias, so giving `version` too is an error; a plain
    name takes `version`, else `default`. A version given as digits becomes an int.
    """
    if is_model_uri(name_or_uri):
        parsed = parse_model_uri(name_or_uri)
        if version is not None:
            raise UserInputError(
                f"{name_or_uri} already names a version or alias: drop the version "
                f"argument ({version})"
            )
        return parsed.name, parsed.ref
    ref = version if version is not None else default
    if isinstance(ref, str) and ref.isdigit():
        ref = int(ref)
    return name_or_uri, ref
