"""Personalised messages: the subject, body and extra headers as Jinja templates, filled from
each list row.

With ``personalize: true`` every list recipient gets a message of their own (one recipient per
transaction). The templates see each CSV column by its header name (``{{ first_name }}``), the
whole row as ``row`` (for headers that are not identifiers: ``{{ row["first name"] }}``), and
``email`` and ``name``. A name the list does not have is an error before anything is sent.

Templates run in Jinja's sandbox with undefined names refused, and a subject or header value
that would contain a line break (or another control character) is refused for that row: it
could inject headers. Only the HTML template is autoescaped; the subject and headers are plain
text, encoded (RFC 2047) when the message is made.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, meta
from jinja2.sandbox import SandboxedEnvironment

from .addresses import Mailbox, check_header_value
from .errors import InputError

__all__ = ["BUILT_IN_FIELDS", "Personalizer"]

BUILT_IN_FIELDS = ("email", "name", "row")


class Personalizer:
    """The campaign's subject and body templates, compiled once."""

    def __init__(
        self,
        *,
        subject: str,
        body: str,
        config: Path,
        body_file: Path,
        html: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """`headers`: the extra headers whose values are templates (name, template).

        :raises InputError: a template does not parse (names the file, line and key)."""
        self._env = SandboxedEnvironment(
            undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False
        )
        # In HTML a row's values are escaped: a name like "<b>" is shown, not obeyed.
        self._html_env = SandboxedEnvironment(
            undefined=StrictUndefined, keep_trailing_newline=True, autoescape=True
        )
        self._names: dict[str, tuple[Path, set[str]]] = {}
        self._subject = self._compile(subject, "subject", config, "subject")
        self._body = self._compile(body, "body", body_file, "file_with_message")
        self._html = (
            self._compile(html, "body", body_file, "file_with_message", self._html_env)
            if html is not None
            else None
        )
        self._headers = [
            (name, self._compile(value, "header", config, f"headers: {name}"))
            for name, value in headers
        ]

    def _compile(
        self,
        source: str,
        kind: str,
        path: Path,
        key: str,
        env: SandboxedEnvironment | None = None,
    ) -> Template:
        env = env or self._env
        try:
            tree = env.parse(source)
        except TemplateSyntaxError as err:
            # The subject's own line in the config is not known here; the body's line is.
            line = err.lineno if kind == "body" else None
            raise InputError(
                f"template error: {err.message}", path=path, line=line, field=key
            ) from None
        found = set(meta.find_undeclared_variables(tree))
        self._names[key] = (path, self._names.get(key, (path, set()))[1] | found)
        return env.from_string(source)

    @property
    def names(self) -> frozenset[str]:
        """Every name the templates use (columns, and the built-in email, name and row)."""
        return frozenset(name for _, names in self._names.values() for name in names)

    def check_fields(self, columns: Collection[str], list_file: Path) -> None:
        """Refuse templates that use a name the list does not have, before anything is sent.

        :raises InputError: naming the template's key and the list's columns.
        """
        known = set(columns) | set(BUILT_IN_FIELDS)
        for key, (path, names) in self._names.items():
            unknown = sorted(names - known)
            if unknown:
                have = ", ".join(columns) if columns else "no columns: a plain address list"
                raise InputError(
                    f"uses {', '.join(repr(n) for n in unknown)}, which {list_file} does not "
                    f"have (it has {have}; also email, name and row)",
                    path=path,
                    field=key,
                )

    def context(self, mailbox: Mailbox, fields: Mapping[str, str]) -> dict[str, object]:
        return {**fields, "row": dict(fields), "email": mailbox.addr, "name": mailbox.name}

    def subject(self, context: Mapping[str, object]) -> str:
        """The subject for one row.

        :raises ValueError: it cannot be rendered, or would contain a line break.
        """
        text = self._render(self._subject, context)
        problem = check_header_value(text)
        if problem:
            raise ValueError(f"subject {problem}")
        return text

    def headers(self, context: Mapping[str, object]) -> list[tuple[str, str]]:
        """The extra headers' values for one row.

        :raises ValueError: one cannot be rendered, or would contain a line break or another
            control character (naming the header)."""
        made = []
        for name, template in self._headers:
            try:
                value = self._render(template, context)
            except ValueError as err:
                raise ValueError(f"{name} header: {err}") from None
            if problem := check_header_value(value):
                raise ValueError(f"{name} header {problem}")
            made.append((name, value))
        return made

    def body(self, context: Mapping[str, object]) -> str:
        """:raises ValueError: the body cannot be rendered for this row."""
        return self._render(self._body, context)

    def html(self, context: Mapping[str, object]) -> str | None:
        """The HTML for one row (None: the message has none).

        :raises ValueError: it cannot be rendered for this row."""
        return self._render(self._html, context) if self._html is not None else None

    @staticmethod
    def _render(template: Template, context: Mapping[str, object]) -> str:
        try:
            text = template.render(context)
        except (TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as err:
            # What a template can raise from a row's values: undefined names, the sandbox,
            # arithmetic on them ({{ total // count }} with count 0), bad indexing or types.
            raise ValueError(f"template error: {err}") from None
        return text
