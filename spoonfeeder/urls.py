from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.urls import include, path
from django.views.generic import RedirectView
from django.views.static import serve

from spoonfeeder import views
from spoonfeeder.security import LoginForm

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("dashboard/test-task/", views.test_task, name="test-task"),
    path("login/", auth_views.LoginView.as_view(authentication_form=LoginForm), name="login"),
    path("logout/", views.logout, name="logout"),
    # One login page (throttled, with the reasons it gives): the admin's sends people there.
    path("admin/login/", login_not_required(RedirectView.as_view(pattern_name="login", query_string=True))),
    path("admin/", admin.site.urls),
    path("nodes/", include("nodes.urls")),
    path("renders/", include("renders.urls")),
    path("stories/", include("stories.urls")),
    path("schedules/", include("scheduling.urls")),
    # Media (renders, test images) behind the login like every page; never public.
    path("media/<path:path>", serve, {"document_root": settings.MEDIA_ROOT}, name="media"),
]
