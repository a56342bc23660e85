from django.apps import AppConfig


class RendersConfig(AppConfig):
    name = "renders"

    def ready(self) -> None:
        from renders import live
        from renders.dispatch import RENDER_DEADLINE
        from spoonfeeder import work

        live.register()
        work.SWEEPS.append("renders.dispatch.sweep")
        work.DEADLINES["renders.tasks.attempt"] = RENDER_DEADLINE
        work.DEADLINES["renders.tasks.feed"] = RENDER_DEADLINE  # it follows the first job it claims
