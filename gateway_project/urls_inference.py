"""The URLconf of the inference handler (gateway_project.fast_asgi): only the inference API, so
resolving a request walks one include instead of the whole site's patterns."""

from django.urls import path

from routing.api import api as inference_api

urlpatterns = [path("", inference_api.urls)]
