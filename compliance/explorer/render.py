"""The explorer's pages as HTML: the data of :mod:`.views` through the Jinja2 templates of
``compliance/templates/explorer/``, which import the report's own section macros
(``sections.html``), so a section reads the same in the report and in the browser.

A :class:`Renderer` is given the links to write (:mod:`.links`): the live server's or the static
export's; the templates are the same.
"""

from __future__ import annotations

from pharmafl.compliance.explorer.views import Explorer
from pharmafl.compliance.templating import environment

NAV = (
    ("overview", "Overview"),
    ("trail", "Audit trail"),
    ("privacy", "Privacy"),
    ("lineage", "Lineage"),
    ("signatures", "Signatures"),
    ("alarms", "Anomalies and alarms"),
)


class Renderer:
    def __init__(self, explorer: Explorer, links):
        self.explorer, self.link = explorer, links

    def _page(self, template: str, title: str, current: str, **data) -> str:
        x = self.explorer
        return (
            environment()
            .get_template(f"explorer/{template}")
            .render(
                title=title,
                current=current,
                nav=NAV,
                link=self.link,
                banner=x.banner(),
                run_id=x.run_id,
                plots={name: self.link.plot(name) for name in x.plots},
                **data,
            )
        )

    def overview(self) -> str:
        return self._page("overview.html", "Overview", "overview", data=self.explorer.overview())

    def trail(self, data: dict) -> str:
        return self._page("trail.html", "Audit trail", "trail", data=data)

    def entry(self, data: dict) -> str:
        return self._page("entry.html", f"Entry {data['seq']}", "trail", data=data)

    def privacy(self) -> str:
        return self._page("privacy.html", "Privacy", "privacy", data=self.explorer.privacy_page(full=False))

    def lineage(self, data: dict) -> str:
        return self._page("lineage.html", "Lineage", "lineage", data=data)

    def signatures(self) -> str:
        return self._page("signatures.html", "Signatures", "signatures", data=self.explorer.signatures())

    def alarms(self) -> str:
        return self._page("alarms.html", "Anomalies and alarms", "alarms", data=self.explorer.alarms())
