"""`GET /docs`: the API described on one page, written from its OpenAPI schema.

FastAPI's own /docs (Swagger UI) and /redoc load their scripts and styles from a CDN, which a
machine offline (or behind a strict firewall) cannot reach, leaving a blank page. FastAPI does not ship those
files; the PyPI package swagger-ui-bundle does, but it would be one more dependency (and a large
vendored script) for a documentation page. This page is plain HTML with no script, so it works
anywhere, under a CSP that allows nothing external. /openapi.json stays the machine-readable
description (for Swagger UI, Postman or a generated client, run wherever those are at hand).
"""

from __future__ import annotations

import html
import json

from ragloop.serving.schemas import MAX_BODY_BYTES

DOCS_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


def _schema_type(schema: dict, components: dict) -> str:
    """A JSON schema written the way a person reads it: `int 1..100 | null`, `"dense" | "bm25"`."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_schema_type(s, components) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(f'"{v}"' for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_schema_type(schema.get('items', {}), components)}"
    lo, hi = (_number(schema.get(a, schema.get(b))) for a, b in (("minimum", "minLength"), ("maximum", "maxLength")))
    bounds = f" {'' if lo is None else lo}..{'' if hi is None else hi}" if lo is not None or hi is not None else ""
    return {"integer": "int", "string": "str", "number": "float", "boolean": "bool"}.get(kind, kind) + bounds


def _number(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _nested(components: dict, names: list[str]) -> list[str]:
    """The objects that lists in these schemas hold (PassageOut, HitOut), to describe them too."""
    found = []
    for name in names:
        for field in components.get(name, {}).get("properties", {}).values():
            ref = field.get("items", {}).get("$ref")
            if ref and ref.rsplit("/", 1)[-1] not in found:
                found.append(ref.rsplit("/", 1)[-1])
    return found


def _fields_table(ref: str | None, components: dict) -> str:
    if not ref:
        return ""
    schema = components.get(ref.rsplit("/", 1)[-1], {})
    required = set(schema.get("required", ()))
    rows = "".join(
        f"<tr><td><code>{html.escape(name)}</code></td><td>{html.escape(_schema_type(field, components))}</td>"
        f"<td>{'yes' if name in required else 'no'}</td>"
        f"<td>{html.escape(str(field.get('description', '')))}"
        f"{'' if 'default' not in field else ' (default: ' + html.escape(json.dumps(field['default'])) + ')'}"
        "</td></tr>"
        for name, field in schema.get("properties", {}).items())
    return ("<table><tr><th>field</th><th>type</th><th>required</th><th>meaning</th></tr>"
            f"{rows}</table>")


def docs_page(schema: dict, api_key: bool = False, max_body_bytes: int = MAX_BODY_BYTES) -> str:
    """The API described on one page from its OpenAPI schema, with no script and nothing from outside
    (FastAPI's /docs loads Swagger UI from a CDN, which an offline machine cannot reach)."""
    components = schema.get("components", {}).get("schemas", {})
    info = schema.get("info", {})
    parts, shown = [], []
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            ok = op.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {})
            shown += [ref.rsplit("/", 1)[-1] for ref in (body.get("$ref"), ok.get("schema", {}).get("$ref")) if ref]
            codes = "".join(f"<li><code>{html.escape(code)}</code> {html.escape(r.get('description', ''))}</li>"
                            for code, r in op.get("responses", {}).items())
            parts.append(
                f"<section><h2><code>{method.upper()} {html.escape(path)}</code></h2>"
                f"<p>{html.escape(op.get('summary', ''))}</p>"
                + (f"<h3>request body (JSON)</h3>{_fields_table(body.get('$ref'), components)}" if body else "")
                + (f"<h3>response</h3>{_fields_table(ok.get('schema', {}).get('$ref'), components)}"
                   if ok.get("schema", {}).get("$ref") else "")
                + f"<h3>status codes</h3><ul>{codes}</ul></section>")
    for name in _nested(components, shown):
        parts.append(f"<section><h2><code>{html.escape(name)}</code></h2>"
                     f"{_fields_table('#/components/schemas/' + name, components)}</section>")
    auth = ("<p><strong>This server needs an API key</strong>: send <code>Authorization: Bearer KEY</code> "
            "with every request but <code>GET /</code>, <code>/docs</code> and <code>/openapi.json</code>.</p>"
            if api_key else "")
    curl_auth = "\n     -H 'Authorization: Bearer KEY' \\" if api_key else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(info.get('title', 'API'))} API</title>
<style>
  body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 56rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
  table {{ border-collapse: collapse; margin: 0.5rem 0; }} td, th {{ border: 1px solid #ccc; padding: 0.2rem 0.5rem;
  text-align: left; vertical-align: top; }} section {{ border-top: 1px solid #ddd; margin-top: 1.5rem; }}
  code {{ background: #f4f4f4; padding: 0 0.2rem; }}
</style></head>
<body><h1>{html.escape(info.get('title', 'API'))} {html.escape(str(info.get('version', '')))}</h1>
<p>{html.escape(info.get('description', ''))}</p>
<p>Bodies are JSON sent as <code>Content-Type: application/json</code>, UTF-8, at most {max_body_bytes} bytes.
Errors are <code>{{"detail": [{{"type", "loc", "msg"}}]}}</code>, where <code>loc</code> names the field.
The machine-readable description: <a href="openapi.json">openapi.json</a>.
A body of another type is refused with 415, a larger one with 413, one that is not UTF-8 with 422.</p>
{auth}
<pre>curl -s http://127.0.0.1:8000/answer -H 'Content-Type: application/json' \\{curl_auth}
     -d '{{"question": "Where did Super Bowl 50 take place?", "k": 2}}'</pre>
{''.join(parts)}
</body></html>
"""
