"""``dg scaffold defs dagster_inference_batch.InferenceBatchComponent <path>``: a commented
``defs.yaml`` ready for a project whose source asset exists."""

from __future__ import annotations

from importlib.resources import files

import dagster as dg
from pydantic import BaseModel, Field


class InferenceBatchScaffoldParams(BaseModel):
    """What ``dg scaffold defs`` may fill in (``--json-params``); the rest is commented.

    Example:
        >>> InferenceBatchScaffoldParams().upstream
        'reviews'
    """

    upstream: str = Field(default="reviews", description="The source asset's key.")
    id_column: str = Field(default="review_id", description="Its id column.")
    prompt_template: str = Field(
        default="Review: {{ row.text }}", description="The user message, a Jinja template."
    )
    model: str = Field(default="meta-llama/llama-3.1-8b-instruct/fp-8", description="Model.")


def render_defs_yaml(type_name: str, name: str, params: InferenceBatchScaffoldParams) -> str:
    """The scaffolded ``defs.yaml``: the template filled with the pipeline's name and params.

    Example:
        >>> text = render_defs_yaml(
        ...     "dagster_inference_batch.InferenceBatchComponent", "my_batch",
        ...     InferenceBatchScaffoldParams())
        >>> "name: my_batch" in text and "{{ env.INFERENCE_API_KEY }}" in text
        True
    """
    template = files(__package__).joinpath("defs.yaml.template").read_text(encoding="utf-8")
    escaped = params.prompt_template.replace("\\", "\\\\").replace('"', '\\"')
    return template.format(
        type_name=type_name,
        name=name,
        upstream=params.upstream,
        id_column=params.id_column,
        prompt_template=escaped,
        model=params.model,
    )


class InferenceBatchScaffolder(dg.Scaffolder[InferenceBatchScaffoldParams]):
    """Writes a commented ``defs.yaml`` named after the target folder.

    Example:
        >>> from pathlib import Path
        >>> target = Path("defs") / "my_batch"
        >>> InferenceBatchScaffolder().scaffold(dg.ScaffoldRequest(
        ...     type_name="dagster_inference_batch.InferenceBatchComponent",
        ...     target_path=target, scaffold_format="yaml", project_root=None,
        ...     params=InferenceBatchScaffoldParams(upstream="raw/tickets")))
        >>> "upstream: raw/tickets" in (target / "defs.yaml").read_text()
        True
    """

    @classmethod
    def get_scaffold_params(cls) -> type[InferenceBatchScaffoldParams]:
        """The params model ``--json-params`` is checked against."""
        return InferenceBatchScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[InferenceBatchScaffoldParams]) -> None:
        """Write ``<target>/defs.yaml``; the folder's name is the pipeline's name.
        ``--format python`` gets Dagster's ``component.py`` stub instead."""
        if request.scaffold_format != "yaml":
            dg.scaffold_component(request)
            return
        params = request.params or InferenceBatchScaffoldParams()
        name = request.target_path.name.replace("-", "_")
        request.target_path.mkdir(parents=True, exist_ok=True)
        (request.target_path / "defs.yaml").write_text(
            render_defs_yaml(request.type_name, name, params), encoding="utf-8"
        )
