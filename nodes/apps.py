from django.apps import AppConfig


class NodesConfig(AppConfig):
    name = "nodes"

    def ready(self) -> None:
        from nodes import checks  # noqa: F401 - registers the system checks
        from nodes.live import register

        register()
