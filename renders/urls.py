from django.urls import path

from renders import views

app_name = "renders"
urlpatterns = [
    path("", views.index, name="index"),
    path("pause/", views.pause, name="pause"),
    path("retry-failed/", views.retry_failed, name="retry-failed"),
    path("templates/", views.templates, name="templates"),
    path("templates/import/", views.template_edit, name="template-import"),
    path("templates/<uuid:code>/", views.template_edit, name="template"),
    path("templates/<uuid:code>/delete/", views.template_delete, name="template-delete"),
    path("test/<uuid:code>/", views.test_render, name="test-render"),
    path("<uuid:code>/", views.job_detail, name="job"),
    path("<uuid:code>/<str:what>/", views.action, name="action"),
]
