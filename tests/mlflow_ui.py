"""Drive the MLflow 3.17 web UI (``mlflow server``) through its own controls, as a person would, from Playwright.

Helpers for the browser tests: each one opens the page it needs with a full document load (so the
single-page app fetches fresh registry state rather than showing what it cached), waits for the page's
heading, then uses the UI's own editors: the model version page's alias editor (``Add``/pencil next to
"Aliases", then the "Add/Edit alias for model version N" modal) and its tag table (the ``Name``/``Value``
form under "Tags", or a row's pencil for a key that already exists). Every write is checked afterwards
by reloading the page and reading what it renders.

Locators are roles, accessible names, titles and ``data-testid`` attributes the MLflow UI ships with;
no CSS class names. ``page`` is a Playwright sync ``Page`` (see ``tests.scaleout_support.chromium_page``);
``url`` is the server's base URL, e.g. ``http://127.0.0.1:5000``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

UI_TIMEOUT_MS = 60_000


def _text(locator: Locator) -> str:
    """A locator's rendered text with whitespace collapsed."""
    return " ".join(locator.inner_text().split())


def _css_string(value: str) -> str:
    """``value`` as a double-quoted CSS attribute-selector string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _expect(target: Any) -> Any:
    """Playwright's retrying ``expect`` (imported late: playwright is an optional ``dev`` dependency)."""
    from playwright.sync_api import expect

    return expect(target)


def _open(page: Page, url: str, route: str, heading: str) -> None:
    """Load ``{url}/#{route}`` as a fresh document and wait until its ``heading`` (h2) is rendered."""
    # A hash-only change would stay in the same document, where the app first renders its cached store.
    page.goto("about:blank")
    page.goto(f"{url.rstrip('/')}/#{route}")
    page.get_by_role("heading", name=heading, exact=True).wait_for(timeout=UI_TIMEOUT_MS)


def _open_version(page: Page, url: str, model: str, version: int) -> None:
    """The model version page, loaded."""
    _open(page, url, f"/models/{model}/versions/{version}", f"Version {version}")
    page.get_by_test_id("tags-section").wait_for(timeout=UI_TIMEOUT_MS)


def _open_model(page: Page, url: str, model: str) -> None:
    """The registered model page, loaded."""
    _open(page, url, f"/models/{model}", model)
    page.get_by_test_id("descriptionEditButton").wait_for(timeout=UI_TIMEOUT_MS)


def _expanded(header: Locator) -> None:
    """Open a collapsible section (its ``role=button`` header) if it is collapsed; keyboard, not a click that might hit its Edit button."""
    if header.get_attribute("aria-expanded") != "true":
        header.press("Enter")
    _expect(header).to_have_attribute("aria-expanded", "true", timeout=UI_TIMEOUT_MS)


def _tags_section(page: Page) -> Locator:
    """The version page's Tags section, expanded (MLflow collapses it when there are no tags), its table rendered."""
    section = page.get_by_test_id("tags-section")
    _expanded(section.locator('[role="button"][aria-expanded]').first)
    section.get_by_test_id("editable-table").wait_for(timeout=UI_TIMEOUT_MS)
    return section


def _read_tags(page: Page) -> dict[str, str]:
    """The tag table on the open version page: name -> value, whitespace collapsed."""
    tags = {}
    for row in _tags_section(page).locator("tr[data-row-key]").all():
        cells = row.locator("td")
        tags[_text(cells.nth(0))] = _text(cells.nth(1))
    return tags


def _read_description(page: Page) -> str:
    """The open page's Description section as rendered (markdown turned to text); empty when there is none."""
    header = page.locator('[role="button"][aria-expanded]').filter(has=page.get_by_test_id("descriptionEditButton"))
    _expanded(header)
    item = header.locator("xpath=..")  # the collapse item: its header and its content
    item.get_by_test_id("note-view-outer-container").first.wait_for(timeout=UI_TIMEOUT_MS)
    content = item.get_by_test_id("note-editor-preview-content")  # absent when empty (MLflow then shows "None")
    if content.count() == 0:
        return ""
    return content.first.inner_text().strip()


def _aliases_item(page: Page) -> Locator:
    """The "Aliases" entry in the version page's header details."""
    label = page.get_by_test_id("descriptions-item-label").filter(has_text=re.compile(r"^\s*Aliases\s*$"))
    return page.get_by_test_id("descriptions-item").filter(has=label)


def _alias_chip(scope: Locator, alias: str) -> Locator:
    """An alias tag (``@ alias``) inside ``scope``."""
    return scope.locator(f'[role="status"][title={_css_string(alias)}]')


def set_alias(page: Page, url: str, model: str, version: int, alias: str) -> None:
    """Point ``alias`` at ``version`` with the version page's alias editor modal (moving it off any other version), and check it stuck."""
    _open_version(page, url, model, version)
    aliases = _aliases_item(page)
    aliases.wait_for(timeout=UI_TIMEOUT_MS)
    if _alias_chip(aliases, alias).count() == 0:
        # "Add" when the version has no alias yet, the pencil when it has some: both open the same modal.
        aliases.locator('button[title="Add aliases"], button[title="Edit aliases"]').first.click()
        dialog = page.get_by_role("dialog").filter(has_text=f"Add/Edit alias for model version {version}")
        dialog.wait_for(timeout=UI_TIMEOUT_MS)
        box = dialog.get_by_role("combobox")
        box.fill(alias)
        # Enter picks the dropdown's active option, the typed text; wait until the dropdown is open with it.
        _expect(box).to_have_attribute("aria-expanded", "true", timeout=UI_TIMEOUT_MS)
        _expect(page.get_by_role("option", name=alias, exact=True).first).to_be_attached(timeout=UI_TIMEOUT_MS)
        box.press("Enter")
        _expect(_alias_chip(dialog, alias)).to_be_visible(timeout=UI_TIMEOUT_MS)
        save = dialog.get_by_role("button", name="Save aliases")
        _expect(save).to_be_enabled(timeout=UI_TIMEOUT_MS)
        save.click()
        try:
            dialog.wait_for(state="hidden", timeout=UI_TIMEOUT_MS)
        except Exception as exc:
            raise AssertionError(f"the alias modal did not close after saving: {_text(dialog)}") from exc
    _open_version(page, url, model, version)
    chip = _alias_chip(_aliases_item(page), alias)
    _expect(chip).to_be_visible(timeout=UI_TIMEOUT_MS)


def add_version_tag(page: Page, url: str, model: str, version: int, key: str, value: str) -> None:
    """Set tag ``key`` = ``value`` on the version with the page's tag table (Add form, or the row's pencil if the key exists), and check it stuck."""
    _open_version(page, url, model, version)
    section = _tags_section(page)
    row = section.locator(f"tr[data-row-key={_css_string(key)}]")
    if row.count() == 0:
        section.get_by_test_id("tags-form-input-name").fill(key)
        section.get_by_test_id("tags-form-input-value").fill(value)
        section.get_by_test_id("add-tag-button").click()
    else:
        row.get_by_test_id("editable-table-button-edit").click()
        field = row.get_by_test_id("editable-table-edited-input")
        field.fill(value)
        row.get_by_test_id("editable-table-button-save").click()
        _expect(field).to_have_count(0, timeout=UI_TIMEOUT_MS)
    _expect(row.locator("td").nth(1)).to_have_text(" ".join(value.split()), timeout=UI_TIMEOUT_MS)
    _open_version(page, url, model, version)
    shown = _read_tags(page)
    if shown.get(key) != " ".join(value.split()):
        raise AssertionError(f"tag {key!r} on {model} v{version} renders as {shown.get(key)!r} after reload, not {value!r}")


def version_tags(page: Page, url: str, model: str, version: int) -> dict[str, str]:
    """The model version page's tags as rendered: name -> value (whitespace collapsed)."""
    _open_version(page, url, model, version)
    return _read_tags(page)


def version_description(page: Page, url: str, model: str, version: int) -> str:
    """The model version page's description as rendered text ("" when it has none)."""
    _open_version(page, url, model, version)
    return _read_description(page)


def model_description(page: Page, url: str, model: str) -> str:
    """The registered model page's description as rendered text ("" when it has none)."""
    _open_model(page, url, model)
    return _read_description(page)


def run_datasets(page: Page, url: str, experiment_id: str, run_id: str) -> dict[str, str]:
    """A run page's datasets as the UI lists them: ``name (digest)`` -> context.

    The run page's "Datasets" row shows the first input (``name (digest)`` and its context tag, then
    ``+N``); clicking it opens the "Data details for <run>" drawer, which lists every input the same way.
    """
    _open(page, url, f"/experiments/{experiment_id}/runs/{run_id}", "Datasets")
    row = page.get_by_role("heading", name="Datasets", exact=True).locator("xpath=..")
    first = row.locator('[role="button"]').first
    first.wait_for(timeout=UI_TIMEOUT_MS)
    shown = _text(first)
    first.click()
    drawer = page.get_by_role("dialog").filter(has_text="Data details for")
    drawer.wait_for(timeout=UI_TIMEOUT_MS)
    entries = drawer.locator('[role="button"][aria-label]')
    entries.first.wait_for(timeout=UI_TIMEOUT_MS)
    listed = {str(entry.get_attribute("aria-label")): _text(entry.locator('[role="status"]')).lower() for entry in entries.all()}
    if not any(shown.startswith(name) for name in listed):
        raise AssertionError(f"the run page shows {shown!r}, which its drawer does not list: {listed}")
    return listed
