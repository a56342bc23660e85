from django.urls import path

from nodes import views

app_name = "nodes"
urlpatterns = [
    path("", views.index, name="index"),
    path("add/", views.edit, name="add"),
    path("discover/", views.discover, name="discover"),
    path("<uuid:code>/edit/", views.edit, name="edit"),
    path("<uuid:code>/toggle/", views.toggle, name="toggle"),
    path("<uuid:code>/remove/", views.remove, name="remove"),
    path("<uuid:code>/check/", views.check, name="check"),
]
