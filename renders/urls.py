from django.urls import path

from renders import views

app_name = "renders"
urlpatterns = [path("", views.index, name="index")]
