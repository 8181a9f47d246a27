"""Moving the "best" aliases (``champion``, ``top1``..``topK``) without crossing data sets.

A stage run by a pipeline has no user at hand to confirm taking an alias from a version trained on
other data (a shared store, two pipelines): it sets the data-qualified alias (``champion-1a2b3c4d``)
instead and says so; ``promote`` with ``force=true`` is the way to move the plain one.
"""

from __future__ import annotations

import time

import mlflow
from mlflow.entities.model_registry import ModelVersion

from multiloss import names
from multiloss.tracking import ranking, registry


def own_alias(stage: str, model_name: str, alias: str, data_print: str) -> str:
    """``alias``, or its data-qualified name when a version of other data holds it (printed)."""
    holder = ranking.alias_holder(model_name, alias)
    if not ranking.other_data(holder, data_print):
        return alias
    qualified = names.data_alias(alias, data_print)
    fingerprint = ranking.shown(names.DATA_FINGERPRINT_TAG, ranking.data_fingerprint(holder))
    print(f"{stage}: {model_name}@{alias} belongs to version {holder.version} of other data ({fingerprint}); "
          f"setting {model_name}@{qualified} instead (promote with force=true moves {alias})")
    return qualified


def plain_tops(model_name: str) -> dict[str, ModelVersion]:
    """``top<k>`` -> the version holding it, for every plain ``top<k>`` alias of ``model_name``."""
    aliases = mlflow.MlflowClient().get_registered_model(model_name).aliases
    prefix = names.TOP_PREFIX
    return {a: ranking.alias_holder(model_name, a) for a in aliases
            if a.startswith(prefix) and a[len(prefix):].isdigit()}


def delete_qualified_tops_beyond(model_name: str, data_print: str, keep: int) -> None:
    """Remove this data's ``top<k>-<fingerprint>`` aliases for k > keep."""
    client = mlflow.MlflowClient()
    suffix = names.data_alias("", data_print)
    for alias in client.get_registered_model(model_name).aliases:
        rank = alias[len(names.TOP_PREFIX):-len(suffix)]
        if alias.startswith(names.TOP_PREFIX) and alias.endswith(suffix) and rank.isdigit() and int(rank) > keep:
            client.delete_registered_model_alias(model_name, alias)


def drop_qualified(model_name: str, alias: str, data_print: str) -> None:
    """Remove this data's ``alias-<fingerprint>`` once the plain alias is its own again, so no
    qualified alias is left pointing at an older choice."""
    qualified = names.data_alias(alias, data_print)
    if qualified in mlflow.MlflowClient().get_registered_model(model_name).aliases:
        mlflow.MlflowClient().delete_registered_model_alias(model_name, qualified)


def set_printing(stage: str, planned: list[tuple[str, str, str]]) -> dict[str, str]:
    """Set each (model, alias, version), printing each one that moved; ``name@alias`` -> version."""
    moved = {}
    for model_name, alias, target in planned:
        before = registry.set_alias(model_name, alias, target)
        moved[f"{model_name}@{alias}"] = target
        if before != target:
            print(f"{stage}: {model_name}@{alias} -> version {target} (was {before or 'unset'})")
    return moved


# How long a stage waits before checking that the plain champion it set is still its own: a stage of
# other data that read the alias as free just before our move sets it right after, within this.
RACE_WINDOW_S = 1.0


def take_champion(stage: str, model_name: str, target: str, data_print: str) -> dict[str, str]:
    """``champion`` on ``target``, or its data-qualified name when a version of other data holds it;
    checked right after and each alias set at once (no plans between the check and the move), so two
    stages of different data reaching it together end with one plain and one qualified champion,
    not one lost. Returns ``name@alias`` -> version for every alias set."""
    alias = own_alias(stage, model_name, names.CHAMPION, data_print)
    moved = set_printing(stage, [(model_name, alias, target)])
    if alias != names.CHAMPION:
        return moved
    time.sleep(RACE_WINDOW_S)
    holder = ranking.alias_holder(model_name, names.CHAMPION)
    if holder is not None and str(holder.version) != str(target) and ranking.other_data(holder, data_print):
        qualified = names.data_alias(names.CHAMPION, data_print)
        print(f"{stage}: {model_name}@{names.CHAMPION} was taken meanwhile by version {holder.version} of other data; "
              f"setting {model_name}@{qualified} instead")
        moved.update(set_printing(stage, [(model_name, qualified, target)]))
        return moved
    drop_qualified(model_name, names.CHAMPION, data_print)
    return moved


def planned_tops(stage: str, model_name: str, versions: list[str], data_print: str) -> tuple[list, bool]:
    """``top1``..``topK`` on ``versions`` (best first), as one set: all data-qualified when any
    plain ``top<k>`` belongs to other data. Returns the planned moves and whether they are qualified."""
    theirs = {a: v for a, v in plain_tops(model_name).items() if ranking.other_data(v, data_print)}
    if theirs:
        shown = ", ".join(f"{a} (version {v.version})" for a, v in sorted(theirs.items()))
        print(f"{stage}: {model_name}'s {shown} belong to versions of other data; these get "
              f"{names.data_alias(names.TOP_PREFIX + '<k>', data_print)} instead")
    planned = [(model_name, names.data_alias(names.top_alias(i), data_print) if theirs else names.top_alias(i), v)
               for i, v in enumerate(versions, start=1)]
    return planned, bool(theirs)


def drop_tops_beyond(model_name: str, keep: int, data_print: str, qualified: bool) -> None:
    """After :func:`planned_tops`: no ``top<k>`` of this data beyond ``keep`` is left pointing at
    an older ranking."""
    if qualified:
        delete_qualified_tops_beyond(model_name, data_print, keep)
    else:
        registry.delete_aliases_beyond(model_name, names.TOP_PREFIX, keep)
        delete_qualified_tops_beyond(model_name, data_print, 0)


def move_ranked(stage: str, model_name: str, versions: list[str], data_print: str) -> dict[str, str]:
    """``top1``..``topK`` on ``versions`` (best first) and ``champion`` on the first, none of them
    taken from a version of other data; returns ``name@alias`` -> version for every alias set."""
    tops, qualified = planned_tops(stage, model_name, versions, data_print)
    moved = set_printing(stage, tops)
    drop_tops_beyond(model_name, len(versions), data_print, qualified)
    champion = own_alias(stage, model_name, names.CHAMPION, data_print)
    moved.update(set_printing(stage, [(model_name, champion, versions[0])]))
    if champion == names.CHAMPION:
        drop_qualified(model_name, names.CHAMPION, data_print)
    return moved
