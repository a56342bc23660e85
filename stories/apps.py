from django.apps import AppConfig


class StoriesConfig(AppConfig):
    name = "stories"

    def ready(self) -> None:
        from spoonfeeder import work
        from stories import live

        live.register()

        work.SWEEPS.append("stories.runner.sweep")
