from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.static import serve

from spoonfeeder import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("dashboard/test-task/", views.test_task, name="test-task"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("nodes/", include("nodes.urls")),
    path("renders/", include("renders.urls")),
    path("stories/", include("stories.urls")),
    path("schedules/", include("scheduling.urls")),
    # Media (renders, test images) behind the login like every page; never public.
    path("media/<path:path>", serve, {"document_root": settings.MEDIA_ROOT}, name="media"),
]
