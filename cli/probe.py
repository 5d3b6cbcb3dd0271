"""``alexfeat probe``: which layer of a store (and which classifier) transfers best."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alexfeat.classifiers.choices import SCALES
from alexfeat.cli.common import Overwrite, check_results, choice_enum, handle_errors, parse_names, write_results

# scikit-learn is imported inside the command: --help answers at once.

Scale = choice_enum("Scale", SCALES)


@handle_errors
def probe_cli(
    ctx: typer.Context,
    store: Annotated[Path, typer.Argument(help="Labelled feature store (.h5) or folder of parts.")],
    layers: Annotated[Optional[str], typer.Option(metavar="LAYER,...", help="Layers to probe (default: every layer "
                                                                            "of the store); a+b: side by side, each "
                                                                            "scaled on its own.")] = None,
    classifier: Annotated[str, typer.Option(metavar="KIND,...", help="Classifiers, as fit-KIND builds them with its "
                                                                     "defaults: logreg, svm, svm-rbf (fit-svm "
                                                                     "--kernel rbf), mlp.")] = "logreg",
    folds: Annotated[int, typer.Option(min=2, help="Stratified cross-validation folds.")] = 5,
    max_rows: Annotated[Optional[int], typer.Option(min=2, help="Probe a stratified sample of this many rows "
                                                                "(for large stores).")] = None,
    test: Annotated[Optional[Path], typer.Option(help="Also fit on every probed row and score on this labelled "
                                                      "store (never used to choose).")] = None,
    scale: Annotated[Scale, typer.Option(help="Feature scaling before the classifier.")] = Scale.standard,
    seed: Annotated[int, typer.Option(help="Seed of the folds, the sample and the classifiers.")] = 0,
    jobs: Annotated[Optional[int], typer.Option(help="Folds fitted in parallel (-1: all cores).")] = None,
    memory_limit: Annotated[Optional[float], typer.Option(min=0.0, help="GB one layer's features may take before "
                                                                        "a sample is probed (default: half the "
                                                                        "available).")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write the results as JSON here.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Draw accuracy by layer here: PNG, or another format "
                                                      "matplotlib writes, by the extension.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Cross-validated accuracy of each layer of a store, for each classifier: which layer to fit on."""
    from alexfeat.classifiers.probe import ProbeConfig, plot_probe, probe

    check_results(ctx, report, plot, overwrite, (store, test))
    limit = None if memory_limit is None else int(memory_limit * 1e9)
    result = probe(ProbeConfig(store=store, layers=parse_names(layers), classifiers=parse_names(classifier),
                               folds=folds, max_rows=max_rows, test=test, scale=scale.value, seed=seed, jobs=jobs,
                               memory_limit=limit))
    write_results(result, report, plot, plot_probe, print_probe)


def print_probe(result) -> None:
    """The table of a classifiers.probe.ProbeResult (plain aligned lines, names never cut), what was probed,
    and the best pair."""
    best = result.best
    width = max(len("layer"), *(len(r.layer) for r in result.results))
    typer.echo(f"{'layer'.ljust(width)}  {'dim':>6}  {'classifier':10}  {f'accuracy ({result.folds}-fold)':19}  "
               f"{'fit s/fold':>10}" + ("  test accuracy" if result.test else ""))
    for r in result.results:
        accuracy = f"{r.mean:.4f} ± {r.std:.4f}" + (" *" if r is best else "")
        typer.echo(f"{r.layer.ljust(width)}  {r.dim:6d}  {r.classifier:10}  {accuracy:19}  {r.fit_seconds:10.2f}"
                   + (f"  {r.test_accuracy:.4f}" if result.test else ""))
    typer.echo(result.summary())
    typer.echo("time by classifier: " + ", ".join(f"{kind} {s:.1f} s"
                                                  for kind, s in result.seconds_by_classifier().items()))
    typer.echo(f"best (*): {best.classifier} on {best.layer}; fit it with: {best.fit_command(result.store)}")
