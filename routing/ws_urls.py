"""Websocket routes (mounted by gateway_project/asgi.py)."""

from django.urls import path

from routing.consumers import ChatConsumer

websocket_urlpatterns: list = [
    path("ws/v1/chat", ChatConsumer.as_asgi()),
]
