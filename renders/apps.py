from django.apps import AppConfig


class RendersConfig(AppConfig):
    name = "renders"

    def ready(self) -> None:
        from spoonfeeder import work

        work.SWEEPS.append("renders.dispatch.sweep")
