from django.apps import AppConfig


class StoriesConfig(AppConfig):
    name = "stories"

    def ready(self) -> None:
        from spoonfeeder import work
        from stories import live
        from stories.movie import EXPORT_DEADLINE
        from stories.runner import STEP_DEADLINE

        live.register()
        work.SWEEPS.append("stories.runner.sweep")
        work.SWEEPS.append("stories.movie.sweep")
        work.DEADLINES["stories.tasks.export"] = EXPORT_DEADLINE
        work.DEADLINES["stories.tasks.step"] = STEP_DEADLINE
