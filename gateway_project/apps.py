"""App configs of the project module itself (imported while apps load: keep imports light)."""

from django.contrib.admin.apps import AdminConfig


class GatewayAdminConfig(AdminConfig):
    """django.contrib.admin with our site (two-factor login, environment banner)."""

    default_site = "gateway_project.admin_site.GatewayAdminSite"
