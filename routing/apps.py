from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Routes and inference"

    def ready(self) -> None:
        from routing import wiring

        wiring.connect()
