from django.urls import path

from scheduling import views

app_name = "scheduling"
urlpatterns = [
    path("", views.index, name="index"),
    path("new/", views.edit, name="new"),
    path("form/", views.refit, name="refit"),
    path("cron/", views.cron_help, name="cron"),
    path("<uuid:code>/", views.detail, name="task"),
    path("<uuid:code>/edit/", views.edit, name="edit"),
    path("<uuid:code>/runs/", views.run_list, name="runs"),
    path("<uuid:code>/delete/", views.delete, name="delete"),
    path("<uuid:code>/<str:what>/", views.action, name="action"),
]
