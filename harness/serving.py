"""A stored run's trained model made ready to serve again, outside a compare: what ``harness bench --run`` and
``harness try`` do with the store's runs."""

from __future__ import annotations

from typing import Any

from harness.errors import UserError


def load_stored_run(
    plugins: Any, store: Any, run_id: str, plan: Any, task: Any, overrides: dict[str, Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """The artifact of run ``run_id``, loaded by ``plan``'s approach (an engine's own settings from its defaults
    and ``overrides``), and the settings predict takes. The load cache is the one compare's measurement used,
    so what an engine built (an export, a merge) is not built again."""
    from harness.load_cache import load_cache_dir, load_cached
    from harness.run_identity import serving_identity
    from harness.store.records import load_artifact

    record = store.load_run(run_id)
    trained_in = record.training.get("trained_in")
    trainer = record.training.get("identity", {}).get("approach")
    if record.status not in ("ok", "reused") or plan.trainer != trainer or not trained_in:
        raise UserError(
            f"run {run_id} is a {record.approach} run ({record.status}); {plan.name} serves a finished run "
            f"trained by {plan.trainer}",
            where="--run",
        )
    settings = plan.settings
    # The run's own settings, with --set on top (an engine's own settings from its defaults).
    settings = {
        **settings,
        **record.settings,
        **{key: settings[key] for key in (overrides or {})},
        **({key: settings[key] for key in plan.info.settings} if plan.info.serves else {}),
    }
    artifact_file = store.artifact_file(trained_in)
    if not artifact_file.is_file():
        raise UserError(f"run {trained_in} no longer has its trained model", where=str(artifact_file))
    cache_dir = load_cache_dir(store, record.training["key"], serving_identity(plugins, plan, settings, store))
    artifact, (_, settings), _, _ = load_cached(
        plugins, plan.approach, task, lambda: load_artifact(artifact_file), settings, cache_dir
    )
    return artifact, settings
