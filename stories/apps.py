from django.apps import AppConfig


class StoriesConfig(AppConfig):
    name = "stories"

    def ready(self) -> None:
        from spoonfeeder import work

        work.SWEEPS.append("stories.runner.sweep")
