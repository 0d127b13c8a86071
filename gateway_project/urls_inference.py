"""The URLconf of the inference handler (gateway_project.fast_asgi): only the inference API, so
resolving a request walks one include instead of the whole site's patterns."""

from django.urls import path

from gateway_project.outage import inference_outage_handlers_install
from routing.api import api as inference_api

inference_outage_handlers_install(inference_api)

urlpatterns = [path("", inference_api.urls)]
