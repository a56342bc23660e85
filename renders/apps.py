from django.apps import AppConfig


class RendersConfig(AppConfig):
    name = "renders"

    def ready(self) -> None:
        from renders import live
        from spoonfeeder import work

        live.register()

        work.SWEEPS.append("renders.dispatch.sweep")
