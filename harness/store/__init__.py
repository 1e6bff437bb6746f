"""The results store: SQLite (standard library) for the index, one directory per run for everything else.

Layout under the store root (``.harness`` by default, ``--store`` or ``HARNESS_HOME`` to move it)::

    runs.db                     index of runs and comparisons
    runs/<run_id>/record.json   the RunRecord
    runs/<run_id>/predictions.jsonl, train_log.jsonl, error.txt (failed runs)
    runs/<run_id>/artifact/     what the run trained: artifact.json and the model it names
    data/<hash>.json            the datasets of a comparison, as every unit of work reads them
    cache/<train key>/<engine>  what harness_load derived from a trained model to serve it (an export, a merge)
    model-hashes.json           sha256 of local model files, by path, size and modification time

    comparisons/<id>.json       each comparison, as the index holds it (so the index can be rebuilt)
    locks/<key>.lock            held while a process trains or measures that training identity
    locks/cleanup.lock          held by ``store gc``/``check --remove-partials`` while they look and remove
    live/<pid>-<hex>.json       what a running compare holds (its data cache, runs, load caches), locked by it

A run is written under ``runs/<run_id>.partial``, which its process holds locked (``.partial/lock``),
and gets its final name in the same transaction that indexes it: an interrupted run leaves nothing that
looks finished, and a finished run is never left out of the index. A ``.partial`` nobody holds is
left by a killed process: the next run with its training identity resumes it as the same run (the model
it finished training, or the Trainer's last checkpoint). Nothing that could be resumed is deleted by a
compare or by ``store check``: the end of a compare removes only ``.partial`` runs that hold nothing (killed
before their first checkpoint), and ``harness store gc`` removes abandoned work when the user asks.
Cleanup never takes what a running compare holds: each compare lists it in its ``live/`` file, locked
(flock) for its whole life, so a compare killed with SIGKILL holds nothing any more; cleanup says what it
skipped.
``harness store check`` rebuilds the index from the ``record.json`` files. A run that measured another
run's trained model (same training identity) has no ``artifact/`` of its own: ``training.trained_in``
names the run that has it.

A module per job: ``store`` (the Store, which hands each job to the module that does it), ``index`` (runs.db),
``layout`` (paths and run ids), ``locks``, ``live`` (what running compares hold), ``partials`` (a run in progress),
``resume`` (what a killed run left), ``cleanup`` (``store gc``), ``listing`` (``store ls``), ``repair``
(``store check``), ``reuse`` (finding stored runs to reuse), ``comparisons``, and ``records`` (the JSON files).
"""

from harness.files import write_json
from harness.store.records import load_artifact, save_artifact, write_predictions
from harness.store.store import Store

# The Store, and the writers and readers that the launcher's train and measure units import from here: those
# units' source is part of every run's code identity (harness.identity), so importing them from their own
# modules instead would change every identity, and no stored run would be reused.
__all__ = ["Store", "load_artifact", "save_artifact", "write_json", "write_predictions"]
