"""Pages of the routing room served by the stock handler (the inference API has its own
URLconf, gateway_project/urls_inference.py)."""

from django.urls import path

from routing import views

urlpatterns = [
    path("", views.playground, name="playground_home"),
    path("playground/", views.playground, name="playground"),
]
