"""MkDocs hooks (mkdocs.yml): the pages that restate the code are generated from it, so they cannot drift.

* ``<!-- settings-table -->`` becomes the table of every ``RESTORE_*`` variable: name, default and
  the description written on the field in ``src/restore/service/settings.py``;
* ``<!-- openapi-reference -->`` becomes the API reference rendered from the app's OpenAPI schema
  (the one a running service serves at /openapi.json, /docs and /redoc), which is also added to
  the site as ``openapi.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # mkdocs loads this file by path; the package is imported from the checkout
    sys.path.insert(0, str(ROOT / "src"))

from mkdocs.structure.files import File  # noqa: E402
from restore.service.app import create_app  # noqa: E402
from restore.service.settings import Settings  # noqa: E402

SETTINGS_MARK = "<!-- settings-table -->"
OPENAPI_MARK = "<!-- openapi-reference -->"
METHODS = ("get", "head", "post", "put", "delete")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(value: object) -> str:
    if value in ((), "", None):
        return "(empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return str(value.relative_to(ROOT)) if value.is_relative_to(ROOT) else str(value)
    return str(value)


def settings_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `RESTORE_{name.upper()}` | `{_cell(_default(field.default))}` | {_cell(field.description or '')} |")
    return "\n".join(rows)


def _schema_type(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return " or ".join(_schema_type(option) for option in options)
    kind = schema.get("type", "object")
    bounds = [f"{word} {schema[key]}" for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                                                          ("minLength", "length >="), ("maxLength", "length <=")) if key in schema]
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def openapi_schema() -> dict[str, Any]:
    def no_engine(spec: object) -> None:  # the schema needs no model loaded; the lifespan never runs here
        raise RuntimeError("not used")

    schema: dict[str, Any] = create_app(Settings(), engine_factory=no_engine).openapi()
    return schema


def api_reference(schema: dict[str, Any]) -> str:
    out: list[str] = []
    for path, operations in schema["paths"].items():
        for method in METHODS:
            operation = operations.get(method)
            if operation is None:
                continue
            out += [f"## `{method.upper()} {path}`", "", f"**{operation.get('summary', '')}**", ""]
            if operation.get("description"):
                out += [operation["description"], ""]
            parameters = operation.get("parameters", [])
            if parameters:
                out += ["| parameter | in | type | meaning |", "|---|---|---|---|"]
                for p in parameters:
                    required = " (required)" if p.get("required") else ""
                    out.append(f"| `{p['name']}`{required} | {p['in']} | {_cell(_schema_type(p.get('schema', {})))} | "
                               f"{_cell(p.get('description', ''))} |")
                out.append("")
            body = operation.get("requestBody", {}).get("content", {})
            if body:
                out += ["Body: " + ", ".join(f"`{media}`" for media in body), ""]
            out += ["| status | meaning |", "|---|---|"]
            for status, response in operation.get("responses", {}).items():
                headers = ", ".join(f"`{h}`" for h in response.get("headers", {}))
                out.append(f"| {status} | {_cell(response.get('description', ''))}{f' (headers: {headers})' if headers else ''} |")
            out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if SETTINGS_MARK in markdown:
        markdown = markdown.replace(SETTINGS_MARK, settings_table())
    if OPENAPI_MARK in markdown:
        markdown = markdown.replace(OPENAPI_MARK, api_reference(openapi_schema()))
    return markdown


def on_files(files: Any, config: Any) -> Any:
    files.append(File.generated(config, "openapi.json", content=json.dumps(openapi_schema(), indent=1)))
    return files
